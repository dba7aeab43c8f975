"""fedsqueeze.codecs: tensors <-> compact bytes (numpy + entropy libraries only).

Façade (every stage)::

    from fedsqueeze.codecs import CodecError, get_codec, register_codec
    codec = get_codec("dense")  # or quant ternary positions sparse masked lowrank entropy residual
    payload = codec.encode(arrays, dtype="fp16")      # all tensors of one message, in order
    arrays = codec.decode(payload, expected_shapes)   # float32; CodecError on any mismatch
    codec.name, codec.version, codec.lossy, codec.stype  # stype = "fedsqueeze/<name>@<version>"

Composable helpers for methods: ``encode_sparse`` / ``decode_sparse`` / ``decode_sparse_parts``
(positions + values), ``encode_masked`` / ``decode_masked`` (values under a shared mask),
``encode_positions`` / ``decode_positions`` (one mask), ``encode_values`` / ``read_values``
(one flat vector under a value spec), ``decode_any`` (dispatch on the header's codec id),
bounds in ``fedsqueeze.codecs.bounds``.  See framing.py for the byte layout, codec-id table
and version policy.
"""

from . import dense as _dense  # noqa: F401  (registers the stages)
from . import entropy as _entropy  # noqa: F401
from . import lowrank as _lowrank  # noqa: F401
from . import masked as _masked  # noqa: F401
from . import positions as _positions  # noqa: F401
from . import quant as _quant  # noqa: F401
from . import residual as _residual  # noqa: F401
from . import sparse as _sparse  # noqa: F401
from . import ternary as _ternary  # noqa: F401
from .bounds import log2_binom, observed_bound_bits, payload_bound
from .framing import CODEC_IDS, FORMAT_VERSION, CodecError
from .masked import decode_masked, decode_masked_values, encode_masked, mask_digest
from .positions import Positions, choose_method, decode_positions, encode_positions, estimate_bytes
from .registry import (
    Codec,
    codec_for_payload,
    codec_names,
    get_codec,
    get_codec_by_id,
    register_codec,
)
from .residual import QUANTIZERS, DecodedResidual, ResidualHeader, median_quantize
from .sparse import (
    SparseTensor,
    decode_sparse,
    decode_sparse_parts,
    encode_sparse,
    encode_sparse_parts,
)
from .values import VALUE_SPECS, encode_values


def decode_any(payload: bytes, expected_shapes, **options):
    """Decode with whichever codec wrote ``payload`` (from its header's codec id)."""
    return codec_for_payload(payload).decode(payload, expected_shapes, **options)


__all__ = [
    "CODEC_IDS", "Codec", "CodecError", "DecodedResidual", "FORMAT_VERSION", "Positions",
    "QUANTIZERS", "ResidualHeader", "SparseTensor", "VALUE_SPECS", "choose_method",
    "codec_for_payload", "codec_names", "decode_any", "decode_masked", "decode_masked_values",
    "decode_positions", "decode_sparse", "decode_sparse_parts", "encode_masked",
    "encode_positions", "encode_sparse", "encode_sparse_parts", "encode_values", "estimate_bytes",
    "get_codec", "get_codec_by_id", "log2_binom", "mask_digest", "median_quantize",
    "observed_bound_bits", "payload_bound", "register_codec",
]
