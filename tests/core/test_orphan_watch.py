"""A process started by a launcher that died by SIGKILL ends itself, whatever it is stuck in."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from fedsqueeze.server.signals import LAUNCHER_PID_VAR, ORPHANED_EXIT_CODE

STUCK = """
import time
from fedsqueeze.server.signals import exit_when_launcher_gone
exit_when_launcher_gone(0.5, lambda: print("last words", flush=True), poll=0.05)
print("watching", flush=True)
time.sleep(120)  # a graceful exit blocked on a dead SuperLink, say
"""


def start_stuck(launcher_pid: int) -> subprocess.Popen:
    env = {**os.environ, LAUNCHER_PID_VAR: str(launcher_pid)}
    child = subprocess.Popen([sys.executable, "-c", STUCK], env=env, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "watching"
    return child


def test_a_stuck_process_outlives_a_live_launcher_and_ends_after_grace_once_it_is_gone():
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    child = start_stuck(launcher.pid)
    try:
        time.sleep(1.0)
        assert child.poll() is None  # the launcher lives: nothing happens
        launcher.kill()   # left a zombie until reaped: still gone
        started = time.monotonic()
        out, _ = child.communicate(timeout=30)
        assert child.returncode == ORPHANED_EXIT_CODE and out.strip() == "last words"
        assert time.monotonic() - started >= 0.5
    finally:
        launcher.kill()
        launcher.wait()
        child.kill()


def test_outside_a_launch_nothing_watches():
    env = {k: v for k, v in os.environ.items() if k != LAUNCHER_PID_VAR}
    code = ("from fedsqueeze.server.signals import exit_when_launcher_gone as w;"
            "print(w(0.1, print))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "None"
