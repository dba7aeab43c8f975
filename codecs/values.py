"""Value coding shared by the stages: one *value spec* names how a flat float vector travels.

    "fp32" | "fp16" | "bf16"   raw (dense.py), body = the little-endian values
    "q1" .. "q8"               uniform b-bit quantization + entropy coding (quant.py)
    "ternary"                  {-s, 0, +s} + entropy coding (ternary.py)

The spec's dtype code (framing.DTYPE_CODES) goes in the frame's tensor table, so a decoder
knows how to read each tensor's values without extra bytes.  ``encode_value_frame`` /
``decode_value_frame`` implement the "one section of values per tensor" frame used by
``quant``, ``ternary`` and ``lowrank``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .framing import (
    DTYPE_CODES,
    DTYPE_NAMES,
    CodecError,
    Reader,
    max_header_bytes,
    numel,
    pack,
    unpack,
)

__all__ = ["VALUE_SPECS", "parse_spec", "spec_is_lossy", "encode_values", "read_values",
           "max_values_bytes", "encode_value_frame", "decode_value_frame"]

VALUE_SPECS = ("fp32", "fp16", "bf16", *(f"q{b}" for b in range(1, 9)), "ternary")


def parse_spec(spec: str) -> tuple[int, int]:
    """spec -> (dtype code, bits); bits is 0 for non-quantized specs."""
    if spec in ("fp32", "fp16", "bf16", "ternary"):
        return DTYPE_CODES[spec], 0
    if isinstance(spec, str) and len(spec) == 2 and spec[0] == "q" and spec[1] in "12345678":
        return DTYPE_CODES["quant"], int(spec[1])
    raise CodecError(f"unknown value spec {spec!r}; one of {', '.join(VALUE_SPECS)}")


def spec_is_lossy(spec: str) -> bool:
    parse_spec(spec)
    return spec != "fp32"


def _rng(seed):
    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def encode_values(x: np.ndarray, spec: str = "fp32", *, stochastic: bool = False, seed=None,
                  allow_nonfinite: bool = False, threshold: float = 0.7,
                  what: str = "values") -> tuple[int, bytes]:
    """Flat float vector -> (dtype code, body)."""
    code, bits = parse_spec(spec)
    if code in (DTYPE_CODES["fp32"], DTYPE_CODES["fp16"], DTYPE_CODES["bf16"]):
        from .dense import encode_raw

        return code, encode_raw(x, spec, allow_nonfinite=allow_nonfinite, what=what)
    if code == DTYPE_CODES["quant"]:
        from .quant import encode_quant

        return code, encode_quant(x, bits, stochastic=stochastic, seed=seed)
    from .ternary import encode_ternary

    return code, encode_ternary(x, stochastic=stochastic, seed=seed, threshold=threshold)


def read_values(r_: Reader, code: int, count: int, where: str, *,
                allow_nonfinite: bool = False) -> np.ndarray:
    """Decode ``count`` values of dtype ``code`` from the rest of ``r_`` (exactly)."""
    name = DTYPE_NAMES.get(code)
    if name in ("fp32", "fp16", "bf16"):
        from .dense import decode_raw

        return decode_raw(r_.take(r_.remaining, f"{where} values"), name, count,
                          allow_nonfinite=allow_nonfinite, what=where)
    if name == "quant":
        from .quant import read_quant

        return read_quant(r_, count, where)
    if name == "ternary":
        from .ternary import read_ternary

        return read_ternary(r_, count, where)
    raise CodecError(f"{where}: dtype code {code} is not a value coding")


def max_values_bytes(count: int) -> int:
    return 4 * count + 1024


def _specs(spec, n: int) -> list[str]:
    specs = [spec] * n if isinstance(spec, str) else list(spec)
    if len(specs) != n:
        raise CodecError(f"{len(specs)} value specs for {n} tensors")
    return specs


def encode_value_frame(codec, arrays: Sequence[np.ndarray], spec, *, stochastic: bool = False,
                       seed=None, allow_nonfinite: bool = False, threshold: float = 0.7,
                       ndim: int | None = None) -> bytes:
    arrays = list(arrays)
    specs = _specs(spec, len(arrays))
    rng = _rng(seed)
    tensors, sections = [], []
    for i, (a, s) in enumerate(zip(arrays, specs)):
        x = np.asarray(a)
        if x.dtype.kind not in "fiub":
            raise CodecError(f"tensor {i}: dtype {x.dtype} is not numeric")
        if ndim is not None and x.ndim != ndim:
            raise CodecError(
                f"tensor {i}: {codec.name} needs {ndim}-D arrays, got shape {x.shape}")
        code, body = encode_values(x.reshape(-1), s, stochastic=stochastic, seed=rng,
                                   allow_nonfinite=allow_nonfinite, threshold=threshold,
                                   what=f"tensor {i}")
        tensors.append((x.shape, code))
        sections.append(body)
    return pack(codec.codec_id, codec.version, tensors, sections)


def decode_value_frame(codec, payload, expected_shapes, *, allowed: Sequence[int],
                       allow_nonfinite: bool = False, ndim: int | None = None) -> list[np.ndarray]:
    shapes = [tuple(int(d) for d in s) for s in expected_shapes]
    if ndim is not None:
        for i, s in enumerate(shapes):
            if len(s) != ndim:
                raise CodecError(f"expected shape {i} {s} is not {ndim}-D")
    cap = max_header_bytes(shapes) + sum(max_values_bytes(numel(s)) for s in shapes)
    f = unpack(payload, codec_id=codec.codec_id, codec_versions=codec.read_versions,
               expected_shapes=shapes, allowed_dtypes=allowed, n_sections=len(shapes),
               max_payload=cap)
    if len(f.params):
        raise CodecError(f"params: {codec.name} takes none")
    out = []
    for i, (t, s) in enumerate(zip(f.tensors, f.sections)):
        where = f"tensor {i}"
        x = read_values(Reader(s, where), t.dtype, t.numel, where, allow_nonfinite=allow_nonfinite)
        out.append(x.reshape(t.shape))
    return out
