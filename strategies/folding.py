"""A compressed message's small records folded into one `ConfigRecord`, and back.

Flower moves a message object by object: the message, its record dict and each record are
objects, and each object is a request of its own on every hop (ClientApp <-> SuperNode,
SuperNode <-> SuperLink <-> ServerApp), about 300 bytes of headers, ids and framing on the
wire. A compressed instruction carries its config record and its payload record, a
compressed reply its metrics and its payload: two small records where one would do, so one
request per message and hop more than needed (`bench/framing.py` prints the calls).

`fold` puts every `ConfigRecord` and `MetricRecord` of a message into one `ConfigRecord`
named `FOLDED`: its `RECORDS` key lists the records ("c:<name>" for a config record, "m:<name>"
for a metric record), and record i's key k becomes "i:k". `ArrayRecord`s (a payload too
large for one object, arrays that travel as they are) stay as they are, and so does a message
whose small records hold more than `FOLD_MAX_BYTES` of bytes values: a payload record that
many messages share (a round's model, coded once for all nodes) is one object that Flower
hashes, stores and hands to the SuperLink once; folded, each message would carry its own copy
there, to save one request that costs under 0.5% of such a message. `unfold` gives the
records back, names, kinds, keys, order and values. `Compressed` folds what it sends and
unfolds the replies; `compression_mod` unfolds what it receives and folds the reply of a
folded message, so a Flower strategy, a handler and a method's client side see the records
as they were made.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

FOLDED = "fsq.folded"
RECORDS = "fsq.records"
KINDS = {"c": ConfigRecord, "m": MetricRecord}
FOLD_MAX_BYTES = 64 * 1024


class FoldError(ValueError):
    """A folded record that does not say which records it holds."""


def fold(content: RecordDict) -> RecordDict:
    """The content with its config and metric records in one `FOLDED` record (unchanged when
    it has fewer than two of them, or they hold more than `FOLD_MAX_BYTES` of bytes)."""
    small = [("c", name, record) for name, record in content.config_records.items()] + \
        [("m", name, record) for name, record in content.metric_records.items()]
    held = sum(len(v) for _, _, record in small for v in record.values() if isinstance(v, bytes))
    if len(small) < 2 or held > FOLD_MAX_BYTES:
        return content
    folded = ConfigRecord({RECORDS: [f"{kind}:{name}" for kind, name, _ in small]})
    for i, (_, _, record) in enumerate(small):
        for key, value in record.items():
            folded[f"{i}:{key}"] = value
    out = RecordDict(dict(content.array_records))
    out[FOLDED] = folded
    return out


def unfold(content: RecordDict) -> RecordDict:
    """The content with a `FOLDED` record's records given back (as it is without one);
    FoldError when the folded record is malformed."""
    folded = content.config_records.get(FOLDED)
    if folded is None:
        return content
    names = folded.get(RECORDS)
    if not isinstance(names, list) or not all(
            isinstance(n, str) and n[:2] in ("c:", "m:") for n in names):
        raise FoldError(f"a folded record must list its records under '{RECORDS}'")
    entries: list[dict] = [{} for _ in names]
    for key, value in folded.items():
        if key == RECORDS:
            continue
        index, sep, name = key.partition(":")
        if not sep or not index.isdigit() or int(index) >= len(names):
            raise FoldError(f"folded key {key!r} names no record")
        entries[int(index)][name] = value
    out = RecordDict({name: record for name, record in content.items() if name != FOLDED})
    for spec, values in zip(names, entries):
        kind, name = spec[0], spec[2:]
        if name in out:
            raise FoldError(f"folded record {name!r} is in the message twice")
        try:
            out[name] = KINDS[kind](values)
        except (TypeError, ValueError) as err:
            raise FoldError(f"folded record {name!r}: {err}") from err
    return out


def unfold_replies(replies: Iterable[Message]
                   ) -> tuple[list[Message], list[tuple[Message, str]]]:
    """(the replies with their records given back, [(malformed reply, why)]), as `screen`."""
    good, problems = [], []
    for reply in replies:
        try:
            good.append(unfold_reply(reply))
        except FoldError as err:
            problems.append((reply, f"undecodable reply: {err}"))
    return good, problems


def unfold_reply(reply: Message) -> Message:
    """The reply with its records given back in place (an error reply as it is);
    FoldError when its folded record is malformed."""
    if not reply.has_error() and FOLDED in reply.content.config_records:
        reply.content = unfold(reply.content)
    return reply
