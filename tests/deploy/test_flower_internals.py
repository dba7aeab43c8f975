"""The one module that touches Flower's internals reports anything missing, never ignores it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fedsqueeze.deploy import flower_internals as fi


def test_the_installed_flower_has_every_internal_we_use():
    code = ("import time; from fedsqueeze.deploy.flower_internals import *; "
            "assert apply_waits(Waits(idle_poll=0.01, reply_wait=0.01), supernode=True); "
            "import flwr.supernode.start_client_internal as m; "
            "import flwr.supercore.inflatable.inflatable_utils as u; "
            "t = time.monotonic(); m.time.sleep(3); m.time.sleep(0.5); "
            "assert time.monotonic() - t < 0.5, 'the stock waits are still there'; "
            "assert u.pull_objects.__kwdefaults__['initial_backoff'] == Waits().pull_backoff; "
            "import flwr.client.grpc_rere_client.connection as c, flwr.supercore.heartbeat as h; "
            "assert c.HEARTBEAT_DEFAULT_INTERVAL == h.HEARTBEAT_DEFAULT_INTERVAL == 10; "
            "assert callable(clientapp_entry()); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_missing_attribute_is_reported_by_name(monkeypatch):
    empty = types.ModuleType(fi.SUPERNODE_LOOP)
    monkeypatch.setattr(fi, "_module", lambda name: empty)
    with pytest.raises(fi.FlowerInternalsError, match="no attribute 'pull_objects'"):
        fi.patch_pull_backoff(fi.Waits())
    with pytest.raises(fi.FlowerInternalsError, match="run_clientapp"):
        fi.clientapp_entry()
    empty.run_clientapp = lambda runtime_api_address, token, insecure, certificates, \
        parent_pid: None
    with pytest.raises(fi.FlowerInternalsError, match="no attribute 'install_from_fab'"):
        fi.clientapp_entry()
    with pytest.raises(fi.FlowerInternalsError, match="HEARTBEAT_MIN_INTERVAL"):
        fi.patch_heartbeat(fi.Waits())


def test_a_heartbeat_below_what_the_superlink_accepts_is_refused():
    with pytest.raises(fi.FlowerInternalsError, match="below the 10 s"):
        fi.patch_heartbeat(fi.Waits(heartbeat_interval=2))


def test_a_changed_wait_literal_is_reported(monkeypatch):
    monkeypatch.setattr(fi.inspect, "getsource", lambda module: "time.sleep(5)")
    with pytest.raises(fi.FlowerInternalsError, match=r"no longer calls time.sleep\(3\)"):
        fi.patch_supernode_waits(fi.Waits())


def test_another_flower_version_is_refused_or_falls_back_with_one_warning(monkeypatch,
                                                                          capsys):
    monkeypatch.setattr(fi.flwr, "__version__", "1.40.0")
    with pytest.raises(fi.FlowerInternalsError, match="1.40.0"):
        fi.apply_waits(fi.Waits(), supernode=False)
    assert fi.apply_waits(fi.Waits(), supernode=False, fallback=True) is False
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "keeping Flower's stock waits" in lines[0]


def test_an_installed_fab_is_not_extracted_again_and_a_new_one_is(monkeypatch, tmp_path):
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.install import install_from_fab

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    app = Path(__file__).resolve().parents[2]
    changed = tmp_path / "changed"
    shutil.copytree(app, changed, ignore=shutil.ignore_patterns(
        ".*", "results", "compare", "tests", "docs", "bench"))
    (changed / "client" / "extra.py").write_text("X = 1\n")
    calls = []

    def flower_install(*args):
        calls.append(args)
        return install_from_fab(*args)

    install = fi._skipping_installed(flower_install)
    fab = build_fab_from_disk(app)
    first = install(fab, None, True)
    assert (first / "pyproject.toml").is_file() and len(calls) == 1
    assert install(fab, None, True) == first and len(calls) == 1  # installed: no extraction
    assert install(build_fab_from_disk(changed), None, True) != first  # another hash
    assert len(calls) == 2
