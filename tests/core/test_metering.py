"""Payload and message byte layers: payload <= message for every message."""

import time

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fedsqueeze.server.metering import DOWN, UP, MeteredGrid
from fedsqueeze.strategies.metering import message_bytes
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, payload_bytes


def _message(n_bytes: int, node: int = 5) -> Message:
    payload = bytes(range(256)) * (n_bytes // 256)
    content = RecordDict({PAYLOAD_RECORD: pack("fedsqueeze/dense@1", payload),
                          "config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=node, message_type="train")


def test_message_is_at_least_its_payload_and_overhead_is_small(flower_task):
    for size in (256, 25_600, 6 * 2**20):  # the last one spans two of Flower's 5 MiB chunks
        msg = _message(size)
        assert payload_bytes(msg.content) == size
        assert size < message_bytes(msg) < size + 2_000


def test_message_bytes_counts_every_object_once_as_flower_serializes_it(flower_task):
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    msg = _message(25_600)
    objects = get_all_nested_objects(msg)
    assert len(objects) == 4   # message, record dict, payload record, config record
    assert message_bytes(msg) == sum(len(o.deflate()) for o in objects.values())


def test_arrays_without_our_stype_are_not_payload(flower_task):
    from flwr.app import Array, ArrayRecord

    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(10, np.float32))})})
    assert payload_bytes(content) == 0


class FakeGrid:
    """Replies to every message with a copy of its content, after one empty poll."""

    def __init__(self):
        self.pushed = []
        self.polls = 0

    def get_node_ids(self):
        return [5, 6]

    def push_messages(self, messages):
        self.pushed = list(messages)
        return [f"id{i}" for i, _ in enumerate(self.pushed)]

    def pull_messages(self, ids):
        self.polls += 1
        if self.polls == 1:
            return []
        replies = []
        for i, msg in enumerate(self.pushed):
            if f"id{i}" in ids:
                reply = Message(msg.content, reply_to=msg)
                reply.metadata.__dict__["_reply_to_message_id"] = f"id{i}"
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                replies.append(reply)
        return replies


def test_metered_grid_counts_both_directions_per_node_and_phase(flower_task):
    grid = MeteredGrid(FakeGrid(), poll_interval=0.0)
    grid.phase = "train:1"
    replies = grid.send_and_receive([_message(2560, 5), _message(512, 6)], timeout=5)
    assert len(replies) == 2
    traffic = grid.traffic("train:1")
    assert traffic[5][DOWN].payload == 2560 and traffic[6][DOWN].payload == 512
    assert traffic[5][UP].payload == 2560
    totals = grid.totals(["train:1"])
    assert totals["payload_down"] == 3072 <= totals["message_down"]
    assert grid.totals(["train:2"])["message_up"] == 0


def test_messages_sharing_a_payload_record_are_each_counted_whole(flower_task):
    shared = pack("fedsqueeze/dense@1", bytes(range(256)) * 40)
    messages = [Message(RecordDict({PAYLOAD_RECORD: shared,
                                    "config": ConfigRecord({"server-round": 1})}),
                        dst_node_id=node, message_type="train") for node in (5, 6)]
    grid = MeteredGrid(FakeGrid(), poll_interval=0.0)
    grid.send_and_receive(messages, timeout=5)
    traffic = grid.traffic("setup")
    for node, message in zip((5, 6), messages):
        assert traffic[node][DOWN].payload == 10_240
        assert traffic[node][DOWN].message == message_bytes(message)


class SlowGrid(FakeGrid):
    """Its replies are stored 0.3 s after the push, and then ring the ServerApp's bell."""

    def __init__(self, bell_name):
        super().__init__()
        self.bell_name = bell_name

    def push_messages(self, messages):
        import threading

        from fedsqueeze.server.doorbell import ring

        ids = super().push_messages(messages)
        self.stored_at = time.monotonic() + 0.3
        threading.Timer(0.3, ring, args=(self.bell_name,)).start()
        return ids

    def pull_messages(self, ids):
        if time.monotonic() < self.stored_at:
            self.polls += 1
            return []
        return super().pull_messages(ids)


def test_with_a_doorbell_replies_are_pulled_when_stored_not_on_a_timer(flower_task,
                                                                       monkeypatch):
    import uuid

    from fedsqueeze.server import doorbell

    monkeypatch.setenv(doorbell.ENV, f"fedsqueeze-test/{uuid.uuid4().hex}")
    bell = doorbell.open_bell("serverapp", 1)
    fake = SlowGrid(doorbell.bell_name("serverapp", 1))
    grid = MeteredGrid(fake, poll_interval=10.0, bell=bell)  # a timer alone would wait 10 s
    try:
        started = time.monotonic()
        replies = grid.send_and_receive([_message(256, 5)], timeout=30)
        assert len(replies) == 1 and time.monotonic() - started < 5.0
        assert fake.polls <= 3  # the first pull, the one the ring started, and its retry
    finally:
        bell.close()
