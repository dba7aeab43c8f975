"""Codec payloads inside Flower records.

A payload travels as ONE uint8 `Array` whose `stype` names the codec and its version
(`fedsqueeze/<codec>@<version>`), so Flower chunks and streams it like any array. All tensors of
a message go into one payload: Flower adds an object id and the stype per Array and per chunk.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsqueeze.codecs import CodecError, observed_bound_bits

PAYLOAD_RECORD = "payload"
PAYLOAD_ARRAY = "bytes"
IDENTITY_RECORD = "identity"
METRICS_RECORD = "metrics"
STYPE_PREFIX = "fedsqueeze/"


def pack(stype: str, payload: bytes) -> ArrayRecord:
    """Wrap codec bytes as the single array of an ArrayRecord."""
    array = Array(dtype="uint8", shape=(len(payload),), stype=stype, data=payload)
    return ArrayRecord({PAYLOAD_ARRAY: array})


def unpack(content: RecordDict, stype: str, name: str = PAYLOAD_RECORD) -> bytes:
    """The codec bytes of a message's payload record `name` (a method with several payloads
    names each); CodecError if absent or of another codec/version."""
    record = content.array_records.get(name)
    if record is None or PAYLOAD_ARRAY not in record:
        raise CodecError(f"message has no '{name}' payload record")
    array = record[PAYLOAD_ARRAY]
    if array.stype != stype:
        raise CodecError(f"payload stype {array.stype!r} does not match expected {stype!r}")
    if array.dtype != "uint8" or len(array.shape) != 1 or array.shape[0] != len(array.data):
        raise CodecError(
            f"payload array must be 1-D uint8 of its byte length, got dtype {array.dtype} "
            f"shape {array.shape} for {len(array.data)} bytes"
        )
    return bytes(array.data)


def payload_bytes(content: RecordDict | None) -> int:
    """Codec bytes carried by a message (the 'payload' accounting layer)."""
    if content is None:
        return 0
    return sum(
        len(array.data)
        for record in content.array_records.values()
        for array in record.values()
        if array.stype.startswith(STYPE_PREFIX)
    )


def payload_bound_bytes(content: RecordDict | None, max_elements: int) -> float | None:
    """The information-theoretic bound of the codec payloads a message carries, in bytes
    (`fedsqueeze.codecs.bounds`), or None when one of them cannot be bounded on the way (it
    needs the receiver's masks, it declares more than `max_elements` values, or it is
    malformed: the receiver rejects it)."""
    total = 0.0
    for record in (content.array_records.values() if content is not None else ()):
        for array in record.values():
            if not array.stype.startswith(STYPE_PREFIX):
                continue
            try:
                bits = observed_bound_bits(bytes(array.data), max_elements)
            except (CodecError, ValueError):
                return None
            if bits is None:
                return None
            total += bits / 8
    return total


def identity_of(content: RecordDict) -> int:
    """The partition id a client reports in every reply: `partition-id` in the reply's
    metrics record (a record of its own would be one more object for every reply to carry
    through ClientApp, SuperNode, SuperLink and ServerApp, each a request of its own), or in
    the identity record of its answer to the discovery query (which has no metrics)."""
    record = content.metric_records.get(METRICS_RECORD)
    if record is None:
        record = content.config_records.get(IDENTITY_RECORD)
    if record is None or "partition-id" not in record:
        raise CodecError("reply carries no partition-id")
    return int(record["partition-id"])


def identity_record(partition_id: int, **extra: str | int | float) -> ConfigRecord:
    return ConfigRecord({"partition-id": partition_id, **extra})
