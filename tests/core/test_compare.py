"""`fedsqueeze compare`: the table's figures follow from rounds.jsonl; finished runs are
reused; bad presets, labels and keys fail before anything runs."""

from __future__ import annotations

import csv
import dataclasses

import pytest

from fedsqueeze.deploy.cli import main
from fedsqueeze.deploy.compare import (
    PRESETS,
    Preset,
    Progress,
    compare,
    config_text,
    preset_named,
)
from fedsqueeze.server.compare import compare_rows, reached
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.registry import method_names
from fedsqueeze.strategies.settings import ConfigError


def _row(t, acc, up, down, wire=None):
    return {"round": t, "accuracy": acc, "message_up": up, "message_down": down,
            "payload_up": up - 10, "payload_down": down - 10, "wire_up": wire,
            "wire_down": wire, "seconds": 1.0}


def test_targets_rounds_bytes_and_ratios_by_hand():
    reference = [_row(1, 0.50, 100, 100), _row(2, 0.70, 100, 100), _row(3, 0.80, 100, 100)]
    other = [_row(1, 0.76, 10, 20), _row(2, None, 10, 20), _row(3, 0.795, 10, 20)]
    rows = compare_rows([("ref", {}, reference), ("other", {"k": 1}, other)],
                        drops=(0.01, 0.05))
    assert [h.target for h in rows[0].reached] == pytest.approx([0.79, 0.75])
    assert [(h.round, h.message_bytes) for h in rows[0].reached] == [(3, 600), (3, 600)]
    # other: 0.795 >= 0.79 first at round 3 (round 2 was not evaluated), 0.76 >= 0.75 at 1
    assert [(h.round, h.message_bytes, h.upload_bytes) for h in rows[1].reached] == \
        [(3, 90, 30), (1, 30, 10)]
    assert rows[1].ratios == pytest.approx([600 / 90, 600 / 30])
    assert rows[1].totals["payload_up"] == 0 and rows[1].totals["wire_up"] is None
    assert reached(other, 0.9).round is None


def test_the_wire_to_target_counts_both_directions():
    rows = [_row(1, 0.1, 10, 10, wire=50), _row(2, 0.9, 10, 10, wire=60)]
    assert reached(rows, 0.5).wire_bytes == 2 * 50 + 2 * 60


TINY = Preset("tiny", "3 clients iid fc2", clients=3, rounds=2,
              setting={"partitioner": "iid", "model": "fc2", "min-nodes": 2},
              runs=(("fedavg", {"method": "fedavg"}),
                    ("topk-ef-0.99", {"method": "fedavg", "uplink": "topk-ef"}),
                    ("fedpara x qsgd", {"method": "fedpara", "uplink": "qsgd",
                                        "downlink": "qsgd"})))


def test_the_table_is_what_rounds_jsonl_says_and_finished_runs_are_reused(tmp_path):
    lines: list[str] = []
    out = compare(TINY, out=tmp_path / "cmp", echo=lines.append)
    for name in ("table.md", "table.csv", "accuracy_vs_bytes.png", "bytes_to_target.png"):
        assert (out / name).stat().st_size > 0
    with open(out / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["label"] for r in table] == ["fedavg", "topk-ef-0.99", "fedpara x qsgd"]
    _, ref_rows, _ = read_run(out / "runs" / "fedavg")
    target = [r["accuracy"] for r in ref_rows if r["accuracy"] is not None][-1] - 0.01
    for entry in table:
        _, rows, summary = read_run(out / "runs" / entry["label"].replace(" ", "_"))
        assert summary["status"] == "completed"
        spent, hit = 0, None
        for r in rows:  # recomputed here, independently of server/compare.py
            spent += r["message_up"] + r["message_down"]
            if r["accuracy"] is not None and r["accuracy"] >= target:
                hit = (r["round"], spent)
                break
        assert float(entry["target1"]) == pytest.approx(target)
        assert (entry["target1_round"], entry["target1_message_bytes"]) == \
            (("", "") if hit is None else (str(hit[0]), str(hit[1])))
        assert int(entry["message_up"]) == sum(r["message_up"] for r in rows)
        assert int(entry["bound_up"]) == sum(r["bound_up"] for r in rows)
        payload = int(entry["payload_up"]) + int(entry["payload_down"])
        # near the bound (positions of clustered top-k entries can code below log2 C(n, k))
        assert 0.95 < payload / (int(entry["bound_up"]) + int(entry["bound_down"])) < 1.1
        assert float(entry["final_accuracy"]) == rows[-1]["accuracy"]
    for r in read_run(out / "runs" / "fedavg")[1]:  # dense fp32: 32 bits per value
        assert r["bound_up"] == r["bound_down"] == 4 * r["params"] * len(r["clients"])
    assert "fedavg" in (out / "table.md").read_text()
    assert any("round 2/2" in line for line in lines)

    before = (out / "runs" / "topk-ef-0.99" / "rounds.jsonl").stat().st_mtime_ns
    again: list[str] = []
    compare(TINY, out=tmp_path / "cmp", echo=again.append, only=["topk-ef-0.99"])
    assert sum("reused" in line for line in again) == 2  # the reference and topk-ef
    assert (out / "runs" / "topk-ef-0.99" / "rounds.jsonl").stat().st_mtime_ns == before


def test_a_run_of_other_keys_is_not_reused(tmp_path):
    compare(dataclasses.replace(TINY, runs=TINY.runs[:1]), out=tmp_path / "c", echo=print)
    changed = dataclasses.replace(TINY, runs=(("fedavg", {"method": "fedavg", "lr": 0.05}),))
    lines: list[str] = []
    compare(changed, out=tmp_path / "c", echo=lines.append)
    assert not any("reused" in line for line in lines)
    config, _, _ = read_run(tmp_path / "c" / "runs" / "fedavg")
    assert config["run_config"]["lr"] == 0.05


def test_bad_presets_labels_and_keys_fail_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="unknown compare preset 'nope'"):
        preset_named("nope")
    with pytest.raises(ConfigError, match="not in preset 'tiny'"):
        compare(TINY, only=["topk"], out=tmp_path / "x")
    broken = dataclasses.replace(TINY, runs=(*TINY.runs, ("bad", {"method": "resfed",
                                                                  "model-transform": "pfedpara"})))
    with pytest.raises(ConfigError, match="run 'bad'.*pfedpara"):
        compare(broken, out=tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_every_preset_run_is_a_valid_run_config():
    from fedsqueeze.deploy.config_check import checked_run_config, find_app_dir

    for preset in PRESETS.values():
        for _, keys in preset.runs:
            checked_run_config(find_app_dir(), {**preset.setting, **keys})
        assert len(set(preset.labels())) == len(preset.runs)
        assert {keys["method"] for _, keys in preset.runs} == set(method_names())


def test_config_text_is_flower_run_config_syntax():
    from fedsqueeze.deploy.config_check import parse_overrides

    keys = {"method": "fedavg", "uplink": "qsgd", "qsgd.bits": 2, "qsgd.error-feedback": True,
            "lr": 0.02}
    assert parse_overrides([config_text(keys)]) == keys


def test_the_command_lists_presets_and_rejects_an_unknown_one(capsys):
    assert main(["compare", "--list"]) == 0
    assert "fmnist-fc2" in capsys.readouterr().out
    assert main(["compare", "nope"]) == 2
    assert "unknown compare preset" in capsys.readouterr().err
    assert main(["compare"]) == 2
    assert "compare needs a PRESET" in capsys.readouterr().err


def test_paper_claims_are_computed_from_the_runs_and_say_what_is_missing():
    from fedsqueeze.server.claims import paper_claims

    def run(accs, up, down):
        return [_row(t + 1, a, up, down) for t, a in enumerate(accs)]

    results = [("fedavg", {}, run([0.6, 0.72, 0.80], 1000, 1000)),
               ("fedsparsify-global-0.9", {}, run([0.6, 0.7, 0.79], 200, 200)),
               ("resfed-0.99", {}, run([0.6, 0.71, 0.78], 1, 100)),
               ("fedpara-0.1", {}, run([0.62, 0.79, 0.80], 250, 250)),
               ("feddst-0.8", {}, run([0.5, 0.6, 0.75], 300, 300)),
               ("fedavgm", {}, run([0.6, 0.62, 0.7], 1000, 1000))]
    claims = {c.paper: c for c in paper_claims(results, compare_rows(results))}
    assert claims["FedSparsify"].verdict == "holds"          # 6000 / 1200 = x5
    assert "x5.00" in claims["FedSparsify"].ours
    assert claims["ResFed"].verdict == "holds" and "x1000" in claims["ResFed"].ours
    assert "0.00 -> 0.00 MB up" in claims["ResFed"].ours      # 70%: 2 kB vs 2 B
    # target 0.79: FedAvg at round 3 (6000 B), fedpara-0.1 at round 2 (1000 B)
    assert claims["FedPara"].verdict == "holds" and "x6.0" in claims["FedPara"].ours
    assert claims["GWPF"].verdict == "not measured: no gwpf* run in this comparison"
    # FedDST's upload is 900 B: FedAvgM spent 1000 B in its first round already
    assert claims["FedDST"].verdict.startswith("not measurable")
    results[-1] = ("fedavgm", {}, run([0.6, 0.62, 0.7], 100, 1000))
    claims = {c.paper: c for c in paper_claims(results, compare_rows(results))}
    assert claims["FedDST"].verdict == "does not hold"          # 0.75 vs 0.70 at 900 B up
    assert "+5.0 points" in claims["FedDST"].ours
    only_theirs = [results[0], results[-1]]  # fedavg and fedavgm: FedDST's own run is missing
    claims = {c.paper: c for c in paper_claims(only_theirs, compare_rows(only_theirs))}
    assert claims["FedDST"].verdict == "not measured: no feddst* run in this comparison"


def test_each_method_module_declares_its_paper_claim_once():
    from fedsqueeze.server.claims import registered_claims
    from fedsqueeze.strategies.claims import CLAIMS, paper_claim

    assert [c.paper for c in registered_claims()] == ["FedDST", "FedPara", "FedSparsify",
                                                       "GWPF", "ResFed"]
    with pytest.raises(ValueError, match="'FedDST' is already registered"):
        paper_claim("FedDST", "again", setting="-", needs=("feddst",))(lambda runs, ours: None)
    assert CLAIMS["FedDST"].claim.startswith("+10% accuracy")  # the first one stays


def test_a_failed_run_is_reported_and_the_comparison_goes_on(tmp_path):
    failing = dataclasses.replace(TINY, runs=(
        TINY.runs[0], ("broken", {"method": "fedavg", "fail-partitions": "0,1,2"}),
        TINY.runs[1]))
    lines: list[str] = []
    out = compare(failing, out=tmp_path / "f", echo=lines.append)
    assert any("broken: failed in round 1" in line for line in lines)
    with open(out / "table.csv") as f:
        status = {r["label"]: r["status"] for r in csv.DictReader(f)}
    assert status == {"fedavg": "completed", "broken": "failed after round 0",
                      "topk-ef-0.99": "completed"}
    assert "broken (failed after round 0)" in (out / "table.md").read_text()
    again: list[str] = []
    compare(failing, out=tmp_path / "f", echo=again.append)
    assert any("broken (failed earlier: reused)" in line for line in again)


def test_a_run_another_comparison_is_writing_is_waited_for_then_reused(tmp_path):
    """Two comparisons on one folder (say `--only` halves, one per core) never write the same
    run: the second waits for the first's lock and reuses what it wrote."""
    import fcntl
    import shutil
    import threading

    one = dataclasses.replace(TINY, runs=TINY.runs[:1])
    written = compare(one, out=tmp_path / "first", echo=print) / "runs" / "fedavg"
    runs = tmp_path / "c" / "runs"
    runs.mkdir(parents=True)
    lines: list[str] = []
    with open(runs / "fedavg.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 12345 (the test)")
        held.flush()
        second = threading.Thread(target=compare, args=(one,),
                                  kwargs={"out": tmp_path / "c", "echo": lines.append})
        second.start()
        for _ in range(300):  # it reports the holder and blocks
            if any("waiting for it" in line for line in lines):
                break
            second.join(0.1)
        assert any("fedavg: being written by pid 12345 (the test)" in line for line in lines)
        assert second.is_alive() and not (runs / "fedavg").exists()
        shutil.copytree(written, runs / "fedavg")  # what the holder writes, then lets go
        fcntl.flock(held, fcntl.LOCK_UN)
    second.join(120)
    assert any("reused" in line for line in lines)


def test_the_eta_of_a_slow_run_after_a_fast_one_is_its_own():
    """Run A, 100 rounds at 0.1 s, then run B at 2 s: B's ETA is its own 2 s per round (not
    the average over both runs' rounds), the comparison's the rest of B plus run C's rounds
    at the runs' mean rate."""
    lines: list[str] = []
    progress = Progress(100 + 150 + 50, echo=lines.append, every=0.0)
    for t in range(1, 101):
        progress.round("A", {"round": t, "accuracy": 0.5}, 100, 0.1)
    for t in range(1, 8):
        progress.round("B", {"round": t, "accuracy": 0.5}, 150, 2.0)
    run_eta, all_eta = progress.etas("B", 150 - 7)
    assert run_eta == pytest.approx(143 * 2.0)
    assert all_eta == pytest.approx(143 * 2.0 + 50 * (0.1 + 2.0) / 2)
    assert lines[-1].endswith("ETA run 4m46s, all 5m38s")
