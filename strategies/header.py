"""What a compressed message says about itself: the header `Compressed` writes into the
message's config record and `compression_mod` reads, so the client needs no configuration.

Keys (all prefixed `fsq.`; the mod removes them before the user's handler sees the config):

    fsq.up      str        the uplink channel's spec ("" = the reply travels as it is; "=":
                           the downlink's, as `fsq.down` names it)
    fsq.down    str        how this message's arrays travel: a channel spec, "" = as they are
    fsq.form    str        "model": the arrays themselves; "change": the coded change of the
                           model the client holds (`fsq.base` names it); "duplex": a
                           channel's per-client coding of both ways (the layout travels
                           when the client starts over, and is kept); "catchup": the
                           current values where the model the client holds (`fsq.base`)
                           changed since (a `sparse` payload over its coded arrays);
                           "replay": the coded changes since the model the client holds
                           (`fsq.base`), `fsq.changes` of them, in order, change j's
                           records named "replay.<j>.<name>"
    fsq.base    str        digest (hex) of the held model a change applies to
    fsq.start   str        the message first carries the broadcast model's start (digest
                           `fsq.base`), coded by this dense spec, records named
                           "start.<name>": the client decodes and holds it, then applies the
                           message's form ("model": nothing more) to it
    fsq.changes int        how many changes a "replay" message carries
    fsq.keys    list[str]  the ArrayRecord's keys, in order ("model" form)
    fsq.shapes  list[int]  the coded arrays' shapes, concatenated, with
    fsq.ndims   list[int]  the number of dimensions of each
    fsq.hold    bool       keep this model: a later change applies to it
    fsq.reset   bool       drop the uplink's error memory (first contact, or the server did
                           not accept the client's last reply)
    fsq.seed    int        the run seed a stochastic uplink derives its seeds from
    fsq.key     str        the ArrayRecord's name in the content (when not "arrays")

Only float32 arrays are coded; any other array (an integer buffer, float64) travels as it is
in the `fsq.raw` ArrayRecord, both ways.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsqueeze.codecs import CodecError

PREFIX = "fsq."
UP, DOWN, FORM, BASE = "fsq.up", "fsq.down", "fsq.form", "fsq.base"
KEYS, SHAPES, NDIMS = "fsq.keys", "fsq.shapes", "fsq.ndims"
CODED = "fsq.coded"  # a kept layout: the coded keys
HOLD, RESET, SEED, KEY = "fsq.hold", "fsq.reset", "fsq.seed", "fsq.key"
RAW_RECORD = "fsq.raw"
MODEL, CHANGE, DUPLEX, CATCHUP, REPLAY = "model", "change", "duplex", "catchup", "replay"
CHANGES = "fsq.changes"
START = "fsq.start"
SAME = "="  # fsq.up: the same channel as the downlink
ARRAYS = "arrays"  # Flower's default ArrayRecord name


@dataclasses.dataclass(frozen=True)
class Layout:
    """The keys of an ArrayRecord in order, and the shapes of its coded (float32) arrays."""

    keys: tuple[str, ...]
    coded: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> Layout:
        coded = [k for k, a in record.items() if a.dtype == "float32"]
        return cls(tuple(record.keys()), tuple(coded),
                   tuple(tuple(record[k].shape) for k in coded))

    def to_config(self) -> dict:
        return {KEYS: list(self.keys),
                SHAPES: [int(d) for shape in self.shapes for d in shape],
                NDIMS: [len(shape) for shape in self.shapes]}

    @classmethod
    def from_config(cls, config: Mapping, raw: ArrayRecord | None) -> Layout:
        """The layout a header carries (the arrays not in `raw` are the coded ones)."""
        try:
            keys = [str(k) for k in config[KEYS]]
        except (KeyError, TypeError) as err:
            raise CodecError(f"compressed message without a valid layout: {err}") from None
        raw_keys = set(raw.keys()) if raw is not None else set()
        return cls(tuple(keys), tuple(k for k in keys if k not in raw_keys),
                   _shapes(config))

    def to_record(self) -> ConfigRecord:
        """The layout as a client keeps it in `context.state`."""
        return ConfigRecord({**self.to_config(), CODED: list(self.coded)})

    @classmethod
    def from_record(cls, record: Mapping) -> Layout:
        return cls(tuple(record[KEYS]), tuple(record[CODED]), _shapes(record))

    def __post_init__(self) -> None:
        if len(self.coded) != len(self.shapes):
            raise CodecError(f"compressed message: {len(self.coded)} coded arrays, "
                             f"{len(self.shapes)} shapes")

    def split(self, record: ArrayRecord) -> tuple[list[np.ndarray], ArrayRecord | None]:
        """(the coded arrays as float32 numpy, the others as an ArrayRecord or None)."""
        if list(record.keys()) != list(self.keys):
            raise CodecError(f"arrays {list(record.keys())[:4]}... do not match the layout "
                             f"{list(self.keys)[:4]}... they were sent with")
        coded = [record[k].numpy() for k in self.coded]
        if any(tuple(a.shape) != s for a, s in zip(coded, self.shapes)):
            raise CodecError("arrays do not have the shapes they were sent with")
        raw = [k for k in self.keys if k not in set(self.coded)]
        return coded, (ArrayRecord({k: record[k] for k in raw}) if raw else None)

    def join(self, coded: Sequence[np.ndarray], raw: ArrayRecord | None) -> ArrayRecord:
        """The ArrayRecord of decoded arrays and the raw ones, keys in the sent order."""
        values = dict(zip(self.coded, coded))
        out = {}
        for key in self.keys:
            if key in values:
                out[key] = Array(np.ascontiguousarray(values[key], dtype=np.float32))
            elif raw is not None and key in raw:
                out[key] = raw[key]
            else:
                raise CodecError(f"compressed message lacks array {key!r}")
        return ArrayRecord(out)


def _shapes(config: Mapping) -> tuple[tuple[int, ...], ...]:
    try:
        dims, ndims = [int(d) for d in config[SHAPES]], [int(n) for n in config[NDIMS]]
    except (KeyError, TypeError, ValueError) as err:
        raise CodecError(f"compressed message without a valid layout: {err}") from None
    if any(n < 0 for n in ndims) or sum(ndims) != len(dims) or any(d < 0 for d in dims):
        raise CodecError("compressed message: layout shapes and dimensions disagree")
    shapes, start = [], 0
    for n in ndims:
        shapes.append(tuple(dims[start:start + n]))
        start += n
    return tuple(shapes)


def header_of(content: RecordDict) -> tuple[str, ConfigRecord] | None:
    """(name, record) of the config record that carries a compression header, if any."""
    for name, record in content.config_records.items():
        if FORM in record:
            return name, record
    return None


def without_header(config: ConfigRecord) -> ConfigRecord:
    return ConfigRecord({k: v for k, v in config.items() if not k.startswith(PREFIX)})


def replay_name(index: int, name: str) -> str:
    """The name of change `index`'s record `name` in a "replay" message."""
    return f"replay.{index}.{name}"


def replay_part(content: RecordDict, index: int) -> RecordDict:
    """Change `index` of a "replay" message, its records under their own names."""
    return _part(content, replay_name(index, ""), f"a replay message without its change {index}")


def start_name(name: str) -> str:
    """The name of the start model's record `name` in a message that carries it."""
    return f"start.{name}"


def start_part(content: RecordDict) -> RecordDict:
    """The start model's records of a message, under their own names."""
    return _part(content, start_name(""), "a message with fsq.start but no start records")


def _part(content: RecordDict, prefix: str, missing: str) -> RecordDict:
    part = RecordDict({name[len(prefix):]: record for name, record in content.items()
                       if name.startswith(prefix)})
    if not part:
        raise CodecError(missing)
    return part

