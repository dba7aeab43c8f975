"""Replies count for the node their message was sent to (issue 13's first finding)."""

from __future__ import annotations

from fedsqueeze.deploy.inprocess import Federation


def test_an_error_reply_sent_by_the_superlink_for_a_dead_node_counts_for_that_node(tmp_path):
    """Flower's SuperLink answers for a node that died with an error reply whose source is
    the SuperLink's own node id: the failure belongs to the node the message went to."""
    from flwr.app import Error
    from flwr.app.message.message import make_message

    fed = Federation({"method": "fedavg", "num-server-rounds": 2, "num-partitions": 60,
                      "min-nodes": 2}, clients=3, results_dir=tmp_path)
    dead = fed.grid.node_of(2)

    def superlink_answers(reply):
        if reply.metadata.src_node_id != dead:
            return reply
        metadata = reply.metadata
        metadata.__dict__["_src_node_id"] = 1  # what the SuperLink puts there
        return make_message(metadata=metadata, error=Error(code=5, reason="node unavailable"))

    fed.grid.tamper = superlink_answers
    row = fed.run_round()
    assert [(f["partition_id"], f["reason"]) for f in row["failures"]] == [
        (2, "client error: node unavailable")]
    assert row["failed_replies"] == 1 and not row["skipped"]


def test_a_restarted_node_rejoins_under_a_new_id_and_stateful_methods_resync(tmp_path):
    fed = Federation({"method": "resfed", "num-server-rounds": 4, "num-partitions": 60,
                      "min-nodes": 2}, clients=3, results_dir=tmp_path)
    fed.run(2)
    old = fed.grid.node_of(1)
    new = fed.grid.restart(1)  # new node id, empty context.state
    row = fed.run_round()
    assert row["rejoined"] == [1] and row["failed_replies"] == 0
    assert row["resfed_resyncs"] == 1 and row["resfed_down_full"] == 1
    directory = fed.runner.directory
    assert directory.node_of(1) == new and directory.get(old) == 1  # old id still named
    assert fed.run_round()["rejoined"] == []


def test_a_new_node_that_cannot_identify_itself_is_asked_once(tmp_path):
    fed = Federation({"method": "fedavg", "num-server-rounds": 4, "num-partitions": 60,
                      "min-nodes": 2}, clients=3, results_dir=tmp_path)
    fed.run_round()
    fed.grid.restart(2)
    fed.grid.fail.add(2)  # its ClientApp raises, the identity query too
    asked = []
    real = fed.grid.push_messages
    fed.grid.push_messages = lambda msgs: (asked.extend(
        m.metadata.message_type for m in msgs), real(msgs))[1]
    fed.run(2)
    assert asked.count("query") == 1
    assert fed.rows[-1]["rejoined"] == [] and fed.rows[-1]["failed_replies"] == 1
