"""Bytes of a Flower message at the payload and message layers (what `Compressed` and the
app's `MeteredGrid` count; the wire layer is measured outside Flower, by the launcher).

- payload: `len(bytes)` of the codec payloads it carries (records whose stype is ours);
- bound: the information-theoretic bound of those payloads (`payload_bound_bytes`; None for
  a payload that cannot be bounded without the receiver's masks);
- message: the serialized size of the whole Flower message as Flower ships it, i.e. the sum of
  the deflated sizes of all objects of its object tree (message, record dict, records, arrays,
  array chunks; Flower transfers messages object by object and `flwr ls` counts the same).
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    no_object_id_recompute,
)

from .payload import payload_bound_bytes, payload_bytes

UP, DOWN = "up", "down"


def message_bytes(message: Message) -> int:
    """Serialized size of a message as Flower ships it (all objects of its tree).

    Each object's id (a SHA-256 of its serialization) is computed once: Flower caches ids of
    arrays by itself, but a ConfigRecord's id is recomputed on every access (a payload of
    up to 5 MiB, serialized and hashed again for each parent that lists it) unless, as Flower's
    own push does, the walk runs under `no_object_id_recompute`."""
    with no_object_id_recompute():
        return tree_bytes(message)


def tree_bytes(message: Message) -> int:
    """`message_bytes` for a caller already under `no_object_id_recompute` (a batch of
    messages that share records: each shared record is hashed once)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def plus(a: float | None, b: float | None) -> float | None:
    """A sum that stays None once a term is unknown (a payload that could not be bounded)."""
    return None if a is None or b is None else a + b


@dataclass
class Traffic:
    payload: int = 0
    message: int = 0
    messages: int = 0
    bound: float | None = 0.0  # None once a payload could not be bounded

    def add(self, payload: int, message: int, messages: int = 1,
            bound: float | None = 0.0) -> None:
        self.payload += payload
        self.message += message
        self.messages += messages
        self.bound = plus(self.bound, bound)

    def measure(self, message: Message, max_payload_elements: int) -> None:
        """Add one message (call under `no_object_id_recompute`)."""
        content = message.content if message.has_content() else None
        self.add(payload_bytes(content), tree_bytes(message),
                 bound=payload_bound_bytes(content, max_payload_elements))


def layer_bytes(traffic: dict[str, Traffic]) -> dict[str, int]:
    """A node's `{UP: Traffic, DOWN: Traffic}` as `payload_up`, `payload_down`,
    `message_up`, `message_down` (a row's per-client bytes)."""
    return {f"{layer}_{d}": getattr(traffic[d], layer)
            for layer in ("payload", "message") for d in (UP, DOWN)}
