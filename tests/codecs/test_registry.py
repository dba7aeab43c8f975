"""Registry, façade and the package's import hygiene."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedsqueeze.codecs as C
from fedsqueeze.codecs import (
    CODEC_IDS,
    Codec,
    CodecError,
    codec_for_payload,
    codec_names,
    get_codec,
    register_codec,
)

CODEC_DIR = Path(C.__file__).parent


def test_every_stage_registered_with_table_id():
    assert set(codec_names()) == set(CODEC_IDS)
    for name in codec_names():
        c = get_codec(name)
        assert c.codec_id == CODEC_IDS[name] and c.stype == f"fedsqueeze/{name}@{c.version}"
        assert isinstance(c.lossy, bool)
    assert {n for n in codec_names() if get_codec(n).lossy} >= {"quant", "ternary"}


def test_unknown_codec_lists_names():
    with pytest.raises(CodecError) as e:
        get_codec("gzip")
    assert all(n in str(e.value) for n in codec_names())
    with pytest.raises(CodecError, match="codec id"):
        C.get_codec_by_id(200)


def test_register_out_of_tree_codec_and_conflicts():
    class Echo(Codec):
        name, version, codec_id, lossy = "echo-test", 1, 201, False

    from fedsqueeze.codecs import registry

    register_codec(Echo)
    try:
        assert get_codec("echo-test").stype == "fedsqueeze/echo-test@1"
    finally:
        registry._BY_NAME.pop("echo-test")
        registry._BY_ID.pop(201)

    class Clash(Codec):
        name, codec_id = "clash-test", CODEC_IDS["dense"]

    with pytest.raises(ValueError, match="already used"):
        register_codec(Clash)

    class NoId(Codec):
        name = "noid-test"

    with pytest.raises(ValueError, match="codec id"):
        register_codec(NoId)


def test_codec_for_payload_and_array_payloads():
    p = get_codec("dense").encode([np.ones(3)])
    assert codec_for_payload(p).name == "dense"
    arr = np.frombuffer(p, dtype=np.uint8)
    np.testing.assert_array_equal(get_codec("dense").decode(arr, [(3,)])[0], 1.0)
    np.testing.assert_array_equal(C.decode_any(memoryview(p), [(3,)])[0], 1.0)
    for bad in ("text", 3, None, np.zeros(4, np.float32)):
        with pytest.raises(CodecError):
            C.decode_any(bad, [(3,)])


def test_codecs_import_no_torch_no_flower():
    code = ("import sys, fedsqueeze.codecs; "
            "bad = [m for m in ('torch', 'flwr', 'pickle') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out in ("[]", "['pickle']")  # pickle may be pulled in by the stdlib, never used by us


def test_no_unsafe_deserialisation_in_sources():
    pat = re.compile(r"\b(pickle|eval|exec|np\.load|numpy\.load|torch\.load|marshal)\b\s*[.(]")
    for f in CODEC_DIR.glob("*.py"):
        assert not pat.search(f.read_text()), f
