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
