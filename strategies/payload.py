"""Codec payloads inside Flower records.

A payload is codec bytes whose `stype` names the codec and its version
(`fedsqueeze/<codec>@<version>`). All tensors of a message go into one payload. Its record
takes one of two forms, chosen by size:

- up to one Flower array chunk (`FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`, 5 MiB by default): a
  `ConfigRecord` {"stype": str, "bytes": payload}, ONE Flower object;
- larger: an `ArrayRecord` with one uint8 `Array` (same stype), which Flower chunks and streams.

Every Flower object of a message is a request of its own on each hop (ClientApp <-> SuperNode,
SuperNode <-> SuperLink, SuperLink <-> ServerApp) and carries its own id in the message. An
`ArrayRecord` of one array is three objects (record, array, chunk), and a payload that fits in
one chunk gains nothing from streaming, so the small form saves two requests per hop and the
two objects' ids, with the same bytes inside.
"""

from __future__ import annotations

from collections.abc import Iterator

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

from fedsqueeze.codecs import CodecError, observed_bound_bits

from .folding import FoldError, unfold

PAYLOAD_RECORD = "payload"
PAYLOAD_ARRAY = "bytes"
PAYLOAD_STYPE = "stype"
IDENTITY_RECORD = "identity"
METRICS_RECORD = "metrics"
STYPE_PREFIX = "fedsqueeze/"


def pack(stype: str, payload: bytes, *, one_object_max: int = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
         ) -> ConfigRecord | ArrayRecord:
    """Wrap codec bytes as a record: one ConfigRecord up to `one_object_max` bytes (one Flower
    chunk), else the single array of an ArrayRecord, which Flower chunks."""
    if len(payload) <= one_object_max:
        return ConfigRecord({PAYLOAD_STYPE: stype, PAYLOAD_ARRAY: bytes(payload)})
    array = Array(dtype="uint8", shape=(len(payload),), stype=stype, data=payload)
    return ArrayRecord({PAYLOAD_ARRAY: array})


def _small(record: ConfigRecord, name: str) -> tuple[str, bytes]:
    stype, data = record.get(PAYLOAD_STYPE), record.get(PAYLOAD_ARRAY)
    if not isinstance(stype, str) or not isinstance(data, bytes) or len(record) != 2:
        raise CodecError(f"payload record '{name}' must hold exactly a str '{PAYLOAD_STYPE}' "
                         f"and bytes '{PAYLOAD_ARRAY}'")
    return stype, data


def _large(record: ArrayRecord, name: str) -> tuple[str, bytes]:
    if PAYLOAD_ARRAY not in record:
        raise CodecError(f"message has no '{name}' payload record")
    array = record[PAYLOAD_ARRAY]
    if array.dtype != "uint8" or len(array.shape) != 1 or array.shape[0] != len(array.data):
        raise CodecError(
            f"payload array must be 1-D uint8 of its byte length, got dtype {array.dtype} "
            f"shape {array.shape} for {len(array.data)} bytes"
        )
    return array.stype, bytes(array.data)


def read_payload(content: RecordDict, name: str = PAYLOAD_RECORD) -> tuple[str, bytes]:
    """(stype, codec bytes) of a message's payload record `name`, in either form; CodecError
    if absent or malformed."""
    if name in content.config_records:
        return _small(content.config_records[name], name)
    if name in content.array_records:
        return _large(content.array_records[name], name)
    raise CodecError(f"message has no '{name}' payload record")


def unpack(content: RecordDict, stype: str, name: str = PAYLOAD_RECORD) -> bytes:
    """The codec bytes of a message's payload record `name` (a method with several payloads
    names each); CodecError if absent, malformed or of another codec/version."""
    found, data = read_payload(content, name)
    if found != stype:
        raise CodecError(f"payload stype {found!r} does not match expected {stype!r}")
    return data


def is_payload(record: ConfigRecord | ArrayRecord) -> bool:
    """Whether a record is a fedsqueeze payload (either form)."""
    if isinstance(record, ConfigRecord):
        stype, data = record.get(PAYLOAD_STYPE), record.get(PAYLOAD_ARRAY)
        return isinstance(stype, str) and stype.startswith(STYPE_PREFIX) \
            and isinstance(data, bytes)
    return isinstance(record, ArrayRecord) and any(
        array.stype.startswith(STYPE_PREFIX) for array in record.values())


def _payloads(content: RecordDict | None) -> Iterator[bytes]:
    """The bytes of every fedsqueeze payload a message carries, in either form."""
    if content is None:
        return
    try:
        content = unfold(content)
    except FoldError:
        return
    for record in content.config_records.values():
        if is_payload(record):
            yield record[PAYLOAD_ARRAY]
    for record in content.array_records.values():
        for array in record.values():
            if array.stype.startswith(STYPE_PREFIX):
                yield bytes(array.data)


def payload_bytes(content: RecordDict | None) -> int:
    """Codec bytes carried by a message (the 'payload' accounting layer)."""
    return sum(len(data) for data in _payloads(content))


def payload_bound_bytes(content: RecordDict | None, max_elements: int) -> float | None:
    """The information-theoretic bound of the codec payloads a message carries, in bytes
    (`fedsqueeze.codecs.bounds`), or None when one of them cannot be bounded on the way (it
    needs the receiver's masks, it declares more than `max_elements` values, or it is
    malformed: the receiver rejects it)."""
    total = 0.0
    for data in _payloads(content):
        try:
            bits = observed_bound_bits(data, max_elements)
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
