"""Codec registry: every stage registers one name, one codec id, a version and a lossy flag.

``get_codec(name)`` returns the (stateless) codec instance; ``get_codec_by_id`` and
``codec_for_payload`` find the codec that wrote a payload from its header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from .framing import CODEC_IDS, CodecError, peek_codec_id

__all__ = [
    "Codec",
    "register_codec",
    "get_codec",
    "get_codec_by_id",
    "codec_for_payload",
    "codec_names",
]


class Codec:
    """Base class of a framed stage.

    Subclasses set ``name``, ``version``, ``lossy`` (True when the stage can lose information
    with some of its options; see ``is_lossy`` for a given option set) and implement
    ``encode(arrays, **options) -> bytes`` and ``decode(payload, expected_shapes, ...)``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    codec_id: ClassVar[int] = 0
    lossy: ClassVar[bool] = False
    #: codec versions this decoder reads (default: only its own)
    read_versions: ClassVar[tuple[int, ...]] = ()

    @property
    def stype(self) -> str:
        return f"fedsqueeze/{self.name}@{self.version}"

    def is_lossy(self, **options) -> bool:
        return self.lossy

    def encode(self, arrays: Sequence[np.ndarray], **options) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def decode(self, payload: bytes, expected_shapes: Sequence[tuple[int, ...]],
               **options) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<codec {self.stype} id={self.codec_id} lossy={self.lossy}>"


_BY_NAME: dict[str, Codec] = {}
_BY_ID: dict[int, Codec] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator. The codec id comes from ``cls.codec_id`` or the framing table."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if not cls.codec_id:
        cls.codec_id = CODEC_IDS.get(cls.name, 0)
    if not 0 < cls.codec_id < 256:
        raise ValueError(f"codec {cls.name!r} needs a codec id in 1..255 (see framing.CODEC_IDS)")
    if cls.name in _BY_NAME and type(_BY_NAME[cls.name]) is not cls:
        raise ValueError(f"codec name {cls.name!r} already registered")
    if cls.codec_id in _BY_ID and _BY_ID[cls.codec_id].name != cls.name:
        raise ValueError(f"codec id {cls.codec_id} already used by {_BY_ID[cls.codec_id].name!r}")
    if not cls.read_versions:
        cls.read_versions = (cls.version,)
    inst = cls()
    _BY_NAME[cls.name] = inst
    _BY_ID[cls.codec_id] = inst
    return cls


def codec_names() -> list[str]:
    return sorted(_BY_NAME)


def get_codec(name: str) -> Codec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; registered: "
                         f"{', '.join(codec_names())}") from None


def get_codec_by_id(codec_id: int) -> Codec:
    try:
        return _BY_ID[codec_id]
    except KeyError:
        raise CodecError(f"unknown codec id {codec_id}; registered: {sorted(_BY_ID)}") from None


def codec_for_payload(payload: bytes) -> Codec:
    """The codec that wrote ``payload`` (checks magic and format version only)."""
    return get_codec_by_id(peek_codec_id(payload))
