"""Which replies may count: the checks every strategy of ours (and the app) applies before
anything is aggregated, each rejection with its reason.

A reply is rejected, once per node: when its node was not sent a message of this exchange;
when one node sent several; when it is an error reply; when it answers another round or
exchange (its group id); when its weight (`num-examples`) is not a positive count; when its
decoded model is non-finite or exceeds `max-abs-value`; when its metric keys differ from the
round's majority (Flower's aggregation needs one key set).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Message


@dataclasses.dataclass(frozen=True)
class Failure:
    """A reply that did not count: which node, in which exchange, and why."""

    node_id: int
    exchange: str
    reason: str


NOT_SENT = "a reply from a node this exchange was not sent to"


def screen(replies: Iterable[Message], sent: Mapping[int, str]
           ) -> tuple[list[Message], list[tuple[Message, str]]]:
    """(the replies that may count, [(rejected reply, reason)]); `sent` maps each node a
    message went to onto that message's group id ("<round>:<exchange>"). A reply rejected as
    NOT_SENT says nothing of its node's state (anybody can claim a node id); the others are
    that node's failure."""
    replies = list(replies)
    per_node = Counter(reply.metadata.src_node_id for reply in replies)
    good, rejected, seen = [], [], set()
    for reply in replies:
        node_id = reply.metadata.src_node_id
        if node_id in seen:
            continue
        problem = None
        if node_id not in sent:
            problem = NOT_SENT
        elif per_node[node_id] > 1:
            problem = f"{per_node[node_id]} replies to one message"
        elif reply.has_error():
            problem = f"client error: {reply.error.reason}"
        elif reply.metadata.group_id != sent[node_id]:
            problem = f"a reply to {reply.metadata.group_id!r}, not to {sent[node_id]!r}"
        if problem is not None:
            seen.add(node_id)
            rejected.append((reply, problem))
        else:
            good.append(reply)
    return good, rejected


def weight_problem(reply: Message, key: str) -> str | None:
    """Why a reply's weight (metric `key`) cannot weight it (None when it can)."""
    values = [record[key] for record in reply.content.metric_records.values() if key in record]
    value = values[0] if values else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not np.isfinite(value) or value < 1:
        return f"{key} = {value!r} must be a positive count"
    return None


def metric_keys(reply: Message) -> frozenset[str]:
    return frozenset(k for record in reply.content.metric_records.values() for k in record)


def majority_metric_keys(replies: list[Message]
                         ) -> tuple[list[Message], list[tuple[Message, str]]]:
    """Keep the replies whose metric keys are the most common key set (ties: the set of the
    earliest reply); the others are rejected with the keys that differ."""
    if not replies:
        return [], []
    keys = [metric_keys(r) for r in replies]
    counts = Counter(keys)
    majority = max(counts, key=lambda k: (counts[k], -keys.index(k)))
    kept, rejected = [], []
    for reply, own in zip(replies, keys):
        if own == majority:
            kept.append(reply)
            continue
        rejected.append((reply, f"rejected: metric keys differ from the round's (extra "
                                f"{sorted(own - majority)}, missing {sorted(majority - own)})"))
    return kept, rejected


def absurd_values(arrays: Mapping[str, Any], bound: float) -> str | None:
    """Why a decoded model cannot be aggregated (None when it can): non-finite entries, or
    |w| above `bound` (0 = no bound); a value like 1e38 is finite but breaks every client
    that trains from the average."""
    for key, value in arrays.items():
        value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        if value.dtype.kind not in "fc":
            continue
        finite = np.isfinite(value)
        if not finite.all():
            return f"{int(value.size - finite.sum())} non-finite values in {key!r}"
        largest = float(np.abs(value).max()) if bound and value.size else 0.0
        if largest > bound:
            return f"max |w| = {largest:.3g} in {key!r} exceeds max-abs-value = {bound:g}"
    return None


def all_finite(value: Any) -> bool:
    """Whether every number in a decoded exchange value (numbers, arrays, lists, dicts) is
    finite."""
    if isinstance(value, Mapping):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    if isinstance(value, (np.ndarray, float, int, np.number)) and not isinstance(value, bool):
        array = np.asarray(value)
        return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())
    return True
