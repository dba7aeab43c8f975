"""The whole model as one codec payload: what FedAvg-like methods send both ways."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedsqueeze.codecs import get_codec

from .payload import PAYLOAD_RECORD, pack, unpack
from .tensors import Arrays, keyed

#: value formats of the whole model: raw floats (dense codec) or uniform b-bit per tensor
#: (quant codec: min-max affine, nearest rounding, entropy-coded symbols)
MODEL_VALUES = ("fp32", "fp16", "bf16", *(f"q{b}" for b in range(1, 9)))


class DenseModelCodec:
    """Every travelling tensor, canonical order, values as `dtype` (one of MODEL_VALUES)."""

    def __init__(self, dtype: str = "fp32") -> None:
        if dtype not in MODEL_VALUES:
            raise ValueError(f"model value format {dtype!r}: one of {', '.join(MODEL_VALUES)}")
        self.quantized = dtype.startswith("q")
        self.codec = get_codec("quant" if self.quantized else "dense")
        self.dtype = dtype
        # the arrays last encoded (the dict and its values, held) and their payload record
        self._last: tuple[Arrays, list, ConfigRecord | ArrayRecord] | None = None

    @property
    def stype(self) -> str:
        return self.codec.stype

    def encode(self, arrays: Arrays) -> RecordDict:
        """The arrays as one payload record. The same arrays again (the same dict holding the
        same array objects: a round's global model, sent to every node) reuse the record,
        encoded once: one encoding, and one object id for Flower and the meter to hash, per
        round instead of per node. Records are never changed once built."""
        values = list(arrays.values())
        last = self._last
        if last is None or last[0] is not arrays or len(last[1]) != len(values) \
                or any(a is not b for a, b in zip(last[1], values)):
            payload = self.codec.encode(values, int(self.dtype[1:])) if self.quantized else \
                self.codec.encode(values, dtype=self.dtype)
            last = self._last = (arrays, values, pack(self.codec.stype, payload))
        return RecordDict({PAYLOAD_RECORD: last[2]})

    def decode(self, content: RecordDict, keys: Sequence[str],
               shapes: Sequence[tuple[int, ...]]) -> Arrays:
        """The arrays of a message; CodecError unless they have exactly these shapes."""
        return keyed(keys, self.codec.decode(unpack(content, self.codec.stype), list(shapes)))
