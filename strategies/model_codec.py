"""The whole model as one payload (the `dense` channel), for the methods that code their own
messages and send the model whole (normclip; evaluation messages)."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from .channels.dense import Dense
from .tensors import Arrays, keyed


class DenseModelCodec:
    """Every travelling tensor, canonical order, values as `dtype` (the dense channel's)."""

    def __init__(self, dtype: str = "fp32") -> None:
        self.channel = Dense(dtype)
        # the arrays last encoded (the dict and its values, held) and their payload records
        self._last: tuple[Arrays, list, dict[str, ConfigRecord | ArrayRecord]] | None = None

    def encode(self, arrays: Arrays) -> RecordDict:
        """The arrays as one payload record. The same arrays again (the same dict holding the
        same array objects: a round's global model, sent to every node) reuse the record,
        encoded once: one encoding, and one object id for Flower and the meter to hash, per
        round instead of per node. Records are never changed once built."""
        values = list(arrays.values())
        last = self._last
        if last is None or last[0] is not arrays or len(last[1]) != len(values) \
                or any(a is not b for a, b in zip(last[1], values)):
            last = self._last = (arrays, values, self.channel.encode(values).records)
        return RecordDict(dict(last[2]))

    def decode(self, content: RecordDict, keys: Sequence[str],
               shapes: Sequence[tuple[int, ...]]) -> Arrays:
        """The arrays of a message; CodecError unless they have exactly these shapes."""
        return keyed(keys, self.channel.decode(content, list(shapes)))
