"""fedsqueeze.codecs: tensors <-> compact bytes (numpy + entropy libraries only).

Façade::

    from fedsqueeze.codecs import CodecError, get_codec, register_codec
    codec = get_codec("dense")
    payload = codec.encode(arrays, dtype="fp16")
    arrays = codec.decode(payload, expected_shapes)

See framing.py for the byte layout, codec-id table and version policy.
"""

from .framing import CODEC_IDS, FORMAT_VERSION, CodecError
from .registry import Codec, codec_for_payload, codec_names, get_codec, get_codec_by_id, register_codec
from . import dense as _dense  # noqa: F401  (registers "dense")
from . import positions as _positions  # noqa: F401

__all__ = [
    "CODEC_IDS",
    "FORMAT_VERSION",
    "Codec",
    "CodecError",
    "codec_for_payload",
    "codec_names",
    "get_codec",
    "get_codec_by_id",
    "register_codec",
]
