"""free_port: distinct ports, picked where outgoing connections cannot take them first."""

from __future__ import annotations

import socket

from fedsqueeze.deploy.launch import flower
from fedsqueeze.deploy.launch.flower import free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range(tmp_path, monkeypatch):
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    monkeypatch.setattr(flower, "EPHEMERAL_RANGE", ranges)
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= port < 32768 for port in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_taken_port_is_never_handed_out(tmp_path, monkeypatch):
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("10050 60999\n")  # leaves 10000..10049 below it: too little room
    monkeypatch.setattr(flower, "EPHEMERAL_RANGE", ranges)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {free_port() for _ in range(50)}
    assert busy not in ports


def test_without_the_kernel_range_the_kernel_picks(tmp_path, monkeypatch):
    monkeypatch.setattr(flower, "EPHEMERAL_RANGE", tmp_path / "absent")
    assert flower.ephemeral_ports() is None
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20 and all(port > 0 for port in ports)
