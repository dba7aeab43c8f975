"""FedAvgM: Flower's server-momentum aggregation on the contract's decoded replies."""

from __future__ import annotations

import numpy as np

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies.tensors import from_arrayrecord

RUN = {"num-partitions": 3, "min-nodes": 2, "num-server-rounds": 3}


def models(tmp_path, name, **keys):
    fed = Federation({**RUN, **keys}, clients=3, results_dir=tmp_path / name)
    out, buffers = [from_arrayrecord(fed.arrays)], []
    for _ in range(3):
        fed.run_round()
        out.append(from_arrayrecord(fed.arrays))
        buffers.append([np.copy(v) for v in getattr(fed.strategy.strategy, "momentum_vector", None)
                        or []])
    return fed, out, buffers


def test_without_momentum_it_is_fedavg_and_with_momentum_it_follows_the_heavy_ball(tmp_path):
    _, fedavg, _ = models(tmp_path, "fedavg", method="fedavg")
    _, plain, _ = models(tmp_path, "plain", method="fedavgm",
                         **{"fedavgm.server-momentum": 0.0})
    for a, b in zip(fedavg[-1].values(), plain[-1].values()):
        np.testing.assert_array_equal(a, b)
    fed, heavy, buffers = models(tmp_path, "heavy", method="fedavgm",
                                 **{"fedavgm.server-momentum": 0.5, "fedavgm.server-lr": 0.8})
    for key, first in zip(heavy[0], fedavg[1].values()):  # round 1: the buffer is the
        np.testing.assert_allclose(heavy[1][key], heavy[0][key] - 0.8 * (heavy[0][key] - first),
                                   atol=1e-6)                # pseudo-gradient itself
    for t in (2, 3):  # w_t = w_{t-1} - lr * (0.5 * buffer_{t-1} + pseudo-gradient_t)
        for i, key in enumerate(heavy[0]):
            np.testing.assert_allclose(heavy[t][key], heavy[t - 1][key] - 0.8 * buffers[t - 1][i],
                                       atol=1e-6)
    state = fed.strategy.export_state()  # Compressed's, with the inner FedAvgM's inside
    assert state.meta["inner"]["tensors"] == len(heavy[0])  # the momentum: resumable state
    restored = Federation({**RUN, "method": "fedavgm"}, clients=3,
                          results_dir=tmp_path / "restored").strategy
    restored.import_state(state)
    for a, b in zip(restored.strategy.momentum_vector, fed.strategy.strategy.momentum_vector):
        np.testing.assert_array_equal(a, b)
