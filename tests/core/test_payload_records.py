"""A payload up to one Flower chunk is one object (a ConfigRecord); a larger one is an
ArrayRecord that Flower chunks. Both read back the same, and malformed records are refused."""

import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedsqueeze.codecs import CodecError
from fedsqueeze.strategies.payload import (
    PAYLOAD_RECORD,
    pack,
    payload_bytes,
    read_payload,
    unpack,
)

STYPE = "fedsqueeze/dense@1"


def _objects(content: RecordDict) -> list[str]:
    message = Message(content, dst_node_id=5, message_type="train")
    return sorted(type(o).__name__ for o in get_all_nested_objects(message).values())


@pytest.mark.parametrize("size", [0, 1, 100_000, FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE])
def test_a_payload_of_at_most_one_chunk_is_a_single_config_record(flower_task, size):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    content = RecordDict({PAYLOAD_RECORD: pack(STYPE, data)})
    assert isinstance(content[PAYLOAD_RECORD], ConfigRecord)
    assert _objects(content) == ["ConfigRecord", "Message", "RecordDict"]
    assert unpack(content, STYPE) == data and payload_bytes(content) == size


def test_a_larger_payload_is_an_array_record_that_flower_chunks(flower_task):
    data = b"\x01" * (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE + 1)
    content = RecordDict({PAYLOAD_RECORD: pack(STYPE, data)})
    assert isinstance(content[PAYLOAD_RECORD], ArrayRecord)
    assert _objects(content).count("ArrayChunk") == 2
    assert unpack(content, STYPE) == data and payload_bytes(content) == len(data)


def test_the_threshold_can_be_lowered_and_both_forms_read_the_same():
    small = RecordDict({PAYLOAD_RECORD: pack(STYPE, b"abc")})
    large = RecordDict({PAYLOAD_RECORD: pack(STYPE, b"abc", one_object_max=2)})
    assert isinstance(large[PAYLOAD_RECORD], ArrayRecord)
    assert read_payload(small) == read_payload(large) == (STYPE, b"abc")


@pytest.mark.parametrize("record", [
    ConfigRecord({"stype": STYPE}),                                 # no bytes
    ConfigRecord({"bytes": b"abc"}),                                # no stype
    ConfigRecord({"stype": 3, "bytes": b"abc"}),                    # stype not a string
    ConfigRecord({"stype": STYPE, "bytes": "abc"}),                 # text, not bytes
    ConfigRecord({"stype": STYPE, "bytes": b"abc", "extra": 1}),    # something else inside
    ArrayRecord({"other": Array(dtype="uint8", shape=(1,), stype=STYPE, data=b"a")}),
    ArrayRecord({"bytes": Array(dtype="float32", shape=(1,), stype=STYPE, data=b"abcd")}),
])
def test_a_malformed_payload_record_is_a_codec_error(record):
    with pytest.raises(CodecError):
        unpack(RecordDict({PAYLOAD_RECORD: record}), STYPE)


def test_a_missing_record_or_another_codec_is_a_codec_error():
    with pytest.raises(CodecError, match="no 'payload'"):
        unpack(RecordDict(), STYPE)
    with pytest.raises(CodecError, match="does not match expected"):
        unpack(RecordDict({PAYLOAD_RECORD: pack("fedsqueeze/dense@999", b"a")}), STYPE)


def test_config_records_that_are_not_payloads_count_no_payload_bytes():
    content = RecordDict({"config": ConfigRecord({"stype": "other/thing@1", "bytes": b"abc"}),
                          "round": ConfigRecord({"server-round": 3})})
    assert payload_bytes(content) == 0
