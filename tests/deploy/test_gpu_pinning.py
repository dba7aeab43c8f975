"""SuperNodes get CUDA_VISIBLE_DEVICES round-robin over --gpus (no GPU needed to check)."""

from fedsqueeze.deploy import deployment
from fedsqueeze.deploy.deployment import DeployOptions


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
    options = DeployOptions(clients=5, gpus=("0", "1"))
    for index in range(5):
        deployment._start_supernode(group, {"PATH": "/bin"}, index, options, 9000 + index,
                                    ["--insecure"])
    pinned = [env["CUDA_VISIBLE_DEVICES"] for _, _, env in group.started]
    assert pinned == ["0", "1", "0", "1", "0"]
    _, command, _ = group.started[3]
    assert "partition-id=3 num-partitions=5" in command
    assert command[command.index("--superlink") + 1] == "127.0.0.1:9003"


def test_warm_executor_nodes_use_process_isolation_and_a_worker_serves_them_pinned():
    group = RecordingGroup()
    options = DeployOptions(clients=2, gpus=("3",))
    nodes = [deployment._start_supernode(group, {"PATH": "/bin"}, i, options, 9000 + i,
                                         ["--insecure"]) for i in range(2)]
    assert all("--isolation" in command and command[command.index("--isolation") + 1]
               == "process" for _, command, _ in group.started)
    assert [n.gpus for n in nodes] == ["3", "3"]
    stock = DeployOptions(clients=1, executor="stock")
    deployment._start_supernode(group, {"PATH": "/bin"}, 0, stock, 9000, ["--insecure"])
    assert "--isolation" not in group.started[-1][1]


def test_without_gpus_the_environment_is_left_alone():
    group = RecordingGroup()
    deployment._start_supernode(group, {"PATH": "/bin"}, 0, DeployOptions(clients=1),
                                9000, ["--insecure"])
    assert "CUDA_VISIBLE_DEVICES" not in group.started[0][2]
