"""The whole model as one dense codec payload: what FedAvg-like methods send both ways."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import RecordDict

from fedsqueeze.codecs import get_codec

from .payload import PAYLOAD_RECORD, pack, unpack
from .tensors import Arrays, keyed


class DenseModelCodec:
    """Every travelling tensor, canonical order, values as `dtype` (fp32, fp16 or bf16)."""

    def __init__(self, dtype: str = "fp32") -> None:
        self.codec = get_codec("dense")
        self.dtype = dtype

    @property
    def stype(self) -> str:
        return self.codec.stype

    def encode(self, arrays: Arrays) -> RecordDict:
        payload = self.codec.encode(list(arrays.values()), dtype=self.dtype)
        return RecordDict({PAYLOAD_RECORD: pack(self.codec.stype, payload)})

    def decode(self, content: RecordDict, keys: Sequence[str],
               shapes: Sequence[tuple[int, ...]]) -> Arrays:
        """The arrays of a message; CodecError unless they have exactly these shapes."""
        return keyed(keys, self.codec.decode(unpack(content, self.codec.stype), list(shapes)))
