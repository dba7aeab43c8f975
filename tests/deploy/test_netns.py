"""Deployment across network namespaces, not loopback (issue 13, part 5): the SuperLink in one
namespace, SuperNodes in two others joined to it by veth pairs, over TLS with SuperNode
authentication, on addresses private to those namespaces. Needs root and `ip`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fedsqueeze.server.results import read_run

pytestmark = [
    pytest.mark.deployment,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="network namespaces need root and iproute2's `ip`"),
]
DRIVER = Path(__file__).with_name("netns_driver.py")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def namespaces():
    """(link ns, (ns, SuperLink address) for side a, the same for side b); removed after."""
    tag = uuid.uuid4().hex[:6]
    link, a, b = f"fsq-{tag}-link", f"fsq-{tag}-a", f"fsq-{tag}-b"
    try:
        for ns in (link, a, b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as err:
        for ns in (link, a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {err.stderr.strip()}")
    sides = []
    for side, ns, subnet in (("a", a, 1), ("b", b, 2)):
        near, far = f"fsq{tag}{side}0", f"fsq{tag}{side}1"
        _ip("link", "add", near, "netns", link, "type", "veth", "peer", "name", far,
            "netns", ns)
        _ip("-n", link, "addr", "add", f"10.77.{subnet}.1/24", "dev", near)
        _ip("-n", ns, "addr", "add", f"10.77.{subnet}.2/24", "dev", far)
        _ip("-n", link, "link", "set", near, "up")
        _ip("-n", ns, "link", "set", far, "up")
        sides.append((ns, f"10.77.{subnet}.1"))
    yield link, sides[0], sides[1]
    for ns in (link, a, b):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_tls_and_auth_between_namespaces_refuse_an_unregistered_supernode(tmp_path, namespaces):
    link, (ns_a, addr_a), (ns_b, addr_b) = namespaces
    results = tmp_path / "netns"
    done = subprocess.run(["ip", "netns", "exec", link, sys.executable, str(DRIVER),
                           str(tmp_path / "work"), str(results), ns_a, addr_a, ns_b, addr_b],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status["status"] == "finished:completed", status
    config, rows, summary = read_run(results)
    assert summary["status"] == "completed" and len(rows) == 1
    assert sorted(config["clients"]) == ["0", "1"]  # the two registered SuperNodes only
    assert all(not r["failures"] for r in rows)
    logs = results / "logs"
    intruder = (logs / "supernode-2.log").read_text()
    assert "Failed to activate SuperNode" in intruder
    # nothing went over loopback: each SuperNode's namespace has only its veth address
    for ns, addr in ((ns_a, addr_a), (ns_b, addr_b)):
        shown = subprocess.run(["ip", "-n", ns, "-4", "addr"], capture_output=True,
                               text=True).stdout
        assert addr.rsplit(".", 1)[0] + ".2/24" in shown
