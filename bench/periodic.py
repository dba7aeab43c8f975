"""A daemon thread that calls `tick()` every `interval` seconds until `stop()`: the samplers
the benches run beside a deployment."""

from __future__ import annotations

import threading


class Periodic(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self._stop_event = threading.Event()

    def tick(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.tick()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
