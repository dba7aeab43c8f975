"""Results sinks: run-config `sinks = "tensorboard"` writes each round's scalars, read back
here with TensorBoard's own reader; a sink that fails is dropped without costing the run its
results files."""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.server.results import ResultsWriter, read_run
from fedsqueeze.strategies.sinks import scalars_of


def test_a_runs_tensorboard_scalars_read_back_with_tensorboards_reader(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fed = Federation({"num-server-rounds": 2, "sinks": "tensorboard", "min-nodes": 2},
                     clients=2, results_dir=tmp_path, run_name="tb")
    rows = fed.run(2)
    fed.runner.writer.finish("completed", 1.0)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"accuracy", "loss", "train_loss", "seconds", "bytes/payload_up",
            "bytes/payload_down", "bytes/message_up", "bytes/message_down"} <= tags
    assert "bytes/wire_up" not in tags  # in process there is no wire: no made-up zero
    for tag in ("accuracy", "bytes/message_up", "bytes/payload_down"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(r["round"], pytest.approx(scalars_of(r)[tag], rel=1e-6))
                          for r in rows], tag
    _, on_disk, _ = read_run(tmp_path / "tb")
    assert on_disk == rows


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def write_round(self, row) -> None:
        self.calls += 1
        raise OSError("tracker unreachable")

    def close(self) -> None:
        raise AssertionError("a dropped sink is not closed")


def test_a_failing_sink_is_dropped_and_every_row_is_still_written(tmp_path):
    sink = Failing()
    writer = ResultsWriter(tmp_path / "run", {"run_config": {}}, sinks=[sink])
    row = {key: 0 for key in ("round", "accuracy", "loss", "payload_up", "payload_down",
                              "message_up", "message_down", "wire_up", "wire_down",
                              "nonzeros", "params", "seconds")}
    for t in (1, 2, 3):
        writer.write_round({**row, "round": t})
    writer.finish("completed", 1.0)
    _, rows, summary = read_run(tmp_path / "run")
    assert [r["round"] for r in rows] == [1, 2, 3] and summary["status"] == "completed"
    assert sink.calls == 1


def test_scalars_of_takes_what_a_row_has():
    row = {"round": 3, "accuracy": 0.5, "wire_up": None, "message_down": 120,
           "metrics": {"f1": 0.4}, "evaluate": {"loss": 1.5, "note": "text"}, "per_client": {}}
    assert scalars_of(row) == {"accuracy": 0.5, "bytes/message_down": 120.0,
                               "metrics/f1": 0.4, "evaluate/loss": 1.5}
