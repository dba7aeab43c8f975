"""Folding a message's small records into one: exact round trip, one object fewer, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedsqueeze.strategies.folding import (
    FOLD_MAX_BYTES,
    FOLDED,
    RECORDS,
    FoldError,
    fold,
    unfold,
)


def _reply_content(payload: bytes = b"\x01\x02" * 300) -> RecordDict:
    return RecordDict({
        "metrics": MetricRecord({"num-examples": 60, "loss": 0.25, "norms": [1.0, 2.0]}),
        "payload": ConfigRecord({"stype": "fedsqueeze/sparse@1", "bytes": payload}),
        "fsq.raw": ArrayRecord({"steps": Array(np.arange(3, dtype=np.int64))}),
        "config:odd": ConfigRecord({"1:key": "a:b", "": True}),   # names and keys with ':'
    })


def _as_dict(content: RecordDict) -> dict:
    return {name: (type(record).__name__, dict(record) if not isinstance(record, ArrayRecord)
                   else {k: a.numpy().tolist() for k, a in record.items()})
            for name, record in content.items()}


def test_unfold_gives_back_every_record_its_kind_keys_and_values():
    content = _reply_content()
    folded = fold(content)
    assert sorted(folded.keys()) == [FOLDED, "fsq.raw"]  # array records stay as they are
    assert folded[FOLDED][RECORDS] == ["c:payload", "c:config:odd", "m:metrics"]
    assert _as_dict(unfold(folded)) == _as_dict(content)
    back = unfold(folded)
    assert isinstance(back["metrics"], MetricRecord) and list(back["metrics"]) == \
        ["num-examples", "loss", "norms"]


def test_folded_content_is_two_objects_fewer_and_fewer_bytes():
    content = _reply_content()
    del content["fsq.raw"]
    plain, folded = get_all_nested_objects(content), get_all_nested_objects(fold(content))
    assert (len(plain), len(folded)) == (4, 2)   # record dict + 3 records; record dict + 1
    assert sum(len(o.deflate()) for o in folded.values()) < \
        sum(len(o.deflate()) for o in plain.values())


def test_what_is_not_worth_folding_stays_as_it_is():
    one = RecordDict({"metrics": MetricRecord({"loss": 1.0}),
                      "arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))})})
    assert fold(one) is one and unfold(one) is one
    shared = _reply_content(b"\x00" * (FOLD_MAX_BYTES + 1))   # a round's model, coded once
    assert fold(shared) is shared


@pytest.mark.parametrize("record", [
    ConfigRecord({"0:x": 1}),                                     # no list of records
    ConfigRecord({RECORDS: ["c:a"], "1:x": 1}),                   # a key of no record
    ConfigRecord({RECORDS: ["c:a"], "x": 1}),                     # a key of no index
    ConfigRecord({RECORDS: ["x:a"]}),                             # an unknown kind
    ConfigRecord({RECORDS: ["m:a"], "0:x": "text"}),              # a metric that is text
    ConfigRecord({RECORDS: ["c:arrays"]}),                        # a name the message has
])
def test_a_malformed_folded_record_is_refused(record):
    content = RecordDict({FOLDED: record,
                          "arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))})})
    with pytest.raises(FoldError):
        unfold(content)
