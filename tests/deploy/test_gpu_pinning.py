"""SuperNodes get CUDA_VISIBLE_DEVICES round-robin over the host's GPUs (no GPU needed to
check); across hosts, by their slot on their host, not their partition id."""

from fedsqueeze.deploy.launch.nodes import NodeHost, start_supernode


class RecordingGroup:
    def __init__(self):
        self.started = []

    def start(self, name, command, env):
        self.started.append((name, command, env))
        return FakeStarted()


class FakeStarted:
    class process:  # noqa: N801 - stands in for a Popen
        pid = 12345


def test_supernodes_are_pinned_round_robin_over_the_given_gpus():
    group = RecordingGroup()
    host = NodeHost(num_partitions=5, gpus=("0", "1"))
    for index in range(5):
        start_supernode(group, {"PATH": "/bin"}, host, index, index, f"127.0.0.1:{9000 + index}",
                        ["--insecure"])
    pinned = [env["CUDA_VISIBLE_DEVICES"] for _, _, env in group.started]
    assert pinned == ["0", "1", "0", "1", "0"]
    _, command, _ = group.started[3]
    assert "partition-id=3 num-partitions=5" in command
    assert command[command.index("--superlink") + 1] == "127.0.0.1:9003"


def test_a_client_host_pins_by_its_own_slots_and_passes_max_wait():
    group = RecordingGroup()
    host = NodeHost(num_partitions=8, gpus=("0", "1"), max_wait=30.0)
    for slot, partition in enumerate((5, 6)):
        start_supernode(group, {"PATH": "/bin"}, host, partition, slot, "server:9097",
                        ["--insecure"])
    assert [env["CUDA_VISIBLE_DEVICES"] for _, _, env in group.started] == ["0", "1"]
    _, command, _ = group.started[0]
    assert "partition-id=5 num-partitions=8" in command
    assert command[command.index("--max-wait-time") + 1] == "30.0"


def test_warm_executor_nodes_use_process_isolation_and_a_worker_serves_them_pinned():
    group = RecordingGroup()
    host = NodeHost(num_partitions=2, gpus=("3",))
    nodes = [start_supernode(group, {"PATH": "/bin"}, host, i, i, f"127.0.0.1:{9000 + i}",
                             ["--insecure"]) for i in range(2)]
    assert all("--isolation" in command and command[command.index("--isolation") + 1]
               == "process" for _, command, _ in group.started)
    assert [n.gpus for n in nodes] == ["3", "3"]
    stock = NodeHost(num_partitions=1, executor="stock")
    start_supernode(group, {"PATH": "/bin"}, stock, 0, 0, "127.0.0.1:9000", ["--insecure"])
    assert "--isolation" not in group.started[-1][1]


def test_without_gpus_the_environment_is_left_alone():
    group = RecordingGroup()
    start_supernode(group, {"PATH": "/bin"}, NodeHost(num_partitions=1), 0, 0, "127.0.0.1:9000",
                    ["--insecure"])
    assert "CUDA_VISIBLE_DEVICES" not in group.started[0][2]
