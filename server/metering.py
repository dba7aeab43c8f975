"""Byte accounting at the payload and message layers, per message, node and direction.

`MeteredGrid` wraps the ServerApp's Grid. Every message it pushes (down) and every reply it
pulls (up) is measured twice:
- payload: `len(bytes)` of the codec payloads it carries (arrays whose stype is ours);
- bound: the information-theoretic bound of those payloads (`payload_bound_bytes`; None
  for the messages whose payload cannot be bounded without the receiver's masks);
- message: the serialized size of the whole Flower message as Flower ships it, i.e. the sum of
  the deflated sizes of all objects of its object tree (message, record dict, records, arrays,
  array chunks; Flower transfers messages object by object and `flwr ls` counts the same).
The wire layer (TCP bytes) is measured outside Flower, by the deployment launcher.

It also replaces Flower's 3-second reply poll by a short one (`poll_interval`), or, with a
doorbell the SuperLink rings when it stores a reply (deployment on one host, see
`doorbell.py`), by a wait on that bell.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable

from flwr.app import Error, Message
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import no_object_id_recompute

from fedsqueeze.strategies.folding import FoldError, unfold_reply
from fedsqueeze.strategies.metering import DOWN, UP, Traffic, plus

from .doorbell import Doorbell

BELL_FALLBACK_POLL = 0.5  # with a doorbell, the reply poll is only a fallback (seconds)


def attributed(reply: Message, sent: Message | None) -> Message:
    """The reply as coming from the node its message went to.

    When a node dies, the SuperLink answers for it with an error reply whose source is the
    SuperLink itself; a reply to one node's message that names another source is not that
    node's answer either. Both become an error reply of the node the message was sent to, so
    the failure is counted once, for the right client."""
    if sent is None or reply.metadata.src_node_id == sent.metadata.dst_node_id:
        return reply
    if reply.has_error():
        error = reply.error
    else:
        error = Error(code=0, reason=f"a reply from node {reply.metadata.src_node_id} answered "
                                     f"the message sent to node {sent.metadata.dst_node_id}")
    return Message(error, reply_to=sent)


def unfolded(reply: Message, sent: Message | None) -> Message:
    """The reply with its records unfolded (`strategies/folding.py`); a malformed folded
    record makes it an error reply of the node its message (`sent`) went to."""
    try:
        return unfold_reply(reply)
    except FoldError as err:
        if sent is None:
            raise
        return Message(Error(code=0, reason=f"undecodable reply: {err}"), reply_to=sent)


class MeteredGrid:
    """A Grid proxy that measures what it sends and receives, grouped by phase."""

    def __init__(self, grid: Grid, poll_interval: float = 0.05,
                 max_payload_elements: int = 1 << 28, bell: Doorbell | None = None) -> None:
        """`max_payload_elements`: the most values one payload may declare to be bounded (a
        hostile header must not make the meter decode more than a model's worth); `bell`:
        rung when a reply is stored, so replies are pulled when they come instead of every
        `poll_interval` s."""
        self._grid = grid
        self.poll_interval = poll_interval
        self.bell = bell
        self.max_payload_elements = max_payload_elements
        self.phase = "setup"  # messages without a group id are counted in this phase
        # (phase, direction, node_id) -> Traffic
        self._traffic: dict[tuple[str, str, int], Traffic] = defaultdict(Traffic)
        self.seconds: dict[str, float] = defaultdict(float)  # phase -> time in send_and_receive

    def __getattr__(self, name: str):  # get_node_ids, run, create_message, ...
        return getattr(self._grid, name)

    def phase_of(self, message: Message) -> str:
        """A message's phase: its group id ("<round>:<exchange>", set by the strategies), or
        the grid's current `phase` for a message without one (discovery)."""
        return message.metadata.group_id or self.phase

    def phases_of_round(self, server_round: int) -> list[str]:
        """The phases of round t that carried messages, in the order they started."""
        prefix = f"{server_round}:"
        return list(dict.fromkeys(p for p, _, _ in self._traffic if p.startswith(prefix)))

    def nodes_of(self, phase: str) -> set[int]:
        """The nodes messages of a phase were sent to."""
        return {node for p, d, node in self._traffic if p == phase and d == DOWN}

    def _record(self, direction: str, messages: list[tuple[int, Message]]) -> None:
        """Measure (node id, message) pairs, under one `no_object_id_recompute`: a record the
        messages share (a round's global model, sent to every node) is hashed once."""
        with no_object_id_recompute():
            for node_id, message in messages:
                self._traffic[(self.phase_of(message), direction, node_id)].measure(
                    message, self.max_payload_elements)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        """Push, then pull replies (every `poll_interval` s, or when the bell rings) until all
        arrive or `timeout`."""
        messages = list(messages)
        started = time.monotonic()
        self._record(DOWN, [(message.metadata.dst_node_id, message) for message in messages])
        ids = list(self._grid.push_messages(messages))
        sent = {i: m for i, m in zip(ids, messages) if i}
        pending = set(sent)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            for reply in self._grid.pull_messages(pending):
                pending.discard(reply.metadata.reply_to_message_id)
                instruction = sent.get(reply.metadata.reply_to_message_id)
                reply = attributed(reply, instruction)
                self._record(UP, [(reply.metadata.src_node_id, reply)])
                replies.append(unfolded(reply, instruction))
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            pause = self.poll_interval if self.bell is None else max(self.poll_interval,
                                                                     BELL_FALLBACK_POLL)
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
            if self.bell is not None:
                self.bell.wait(pause)
            else:
                time.sleep(max(pause, 0.0))
        if messages:
            self.seconds[self.phase_of(messages[0])] += time.monotonic() - started
        return replies

    def traffic(self, *phases: str) -> dict[int, dict[str, Traffic]]:
        """{node_id: {"up": Traffic, "down": Traffic}} summed over these phases."""
        wanted = set(phases)
        result: dict[int, dict[str, Traffic]] = defaultdict(
            lambda: {UP: Traffic(), DOWN: Traffic()})
        for (p, direction, node_id), traffic in self._traffic.items():
            if p in wanted:
                result[node_id][direction].add(traffic.payload, traffic.message,
                                               traffic.messages, traffic.bound)
        return dict(result)

    def totals(self, phases: Iterable[str] | None = None) -> dict[str, int]:
        """Payload and message bytes per direction over some phases (all by default), and the
        payloads' bound (`bound_<direction>`, bytes rounded up; None if one was unbounded)."""
        wanted = None if phases is None else set(phases)
        out: dict[str, int | None] = {
            f"{layer}_{d}": 0 for layer in ("payload", "message") for d in (UP, DOWN)}
        bounds: dict[str, float | None] = {UP: 0.0, DOWN: 0.0}
        for (p, direction, _), traffic in self._traffic.items():
            if wanted is None or p in wanted:
                out[f"payload_{direction}"] += traffic.payload
                out[f"message_{direction}"] += traffic.message
                bounds[direction] = plus(bounds[direction], traffic.bound)
        for direction, b in bounds.items():
            out[f"bound_{direction}"] = None if b is None else math.ceil(b)
        return out
