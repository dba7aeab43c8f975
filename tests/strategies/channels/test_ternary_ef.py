"""ternary-ef: per tensor -s, 0, +s of the update (TWN threshold), with error feedback."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedsqueeze.strategies.channels.ternary_ef import TernaryEF
from fedsqueeze.strategies.payload import payload_bytes
from fedsqueeze.strategies.settings import ConfigError

F = np.float32


def test_entries_above_the_threshold_become_plus_or_minus_their_mean():
    update = [np.array([0.1, -2.0, 3.0, 0.0, -4.0, 0.1], F)]  # mean |u| = 1.53: keep 3
    (delivered,) = TernaryEF().encode(update).delivered()
    assert delivered.tolist() == [0.0, -3.0, 3.0, 0.0, -3.0, 0.0]
    (decoded,) = TernaryEF().decode(RecordDict(TernaryEF().encode(update).records), [(6,)])
    assert np.array_equal(decoded, delivered)


def test_what_is_not_delivered_is_kept_exactly_over_three_rounds(channel_loop):
    channel_loop(TernaryEF(), None).assert_error_memory_is_exact(TernaryEF(), rounds=3)


def test_the_uplink_is_under_log2_3_bits_per_entry(channel_loop):
    exchange = channel_loop(TernaryEF(), None).run_round()
    n = sum(a.size for a in exchange.before)
    assert payload_bytes(exchange.replies[0].content) < n * np.log2(3) / 8 + 256


def test_the_threshold_is_validated():
    with pytest.raises(ConfigError, match="ternary-ef.threshold"):
        TernaryEF(threshold=-1)
