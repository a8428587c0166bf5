"""orjson and msgspec where they give exactly what the standard library gives, and the standard library elsewhere.

The messageId hashes canonical JSON and Segment receives compact JSON; both are the standard library's bytes,
whichever library writes them. Hypothesis looks for a value where the fast path would write other bytes (or
read another value) than the standard library: it must always either agree or step aside.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import fastjson
from engine.aircall.envelope import (
    EnvelopeError,
    _strict_loads,
    canonical_json_stdlib,
    content_fingerprint,
    parse_json,
    without_urls,
)
from engine.mapping.message import RenderError, encode, encode_stdlib
from tests.conftest import fixture_paths

floats = st.one_of(
    st.floats(),
    st.sampled_from([1e16, 1e15, 1.0, -0.0, 1e-4, 1e-5, 9.99e-5, 2.5e-7, 1e22, 5e-324, 1.7976931348623157e308]),
    st.integers(min_value=-320, max_value=300).map(lambda e: 1.2345 * 10.0**e),
)
texts = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8")),
    st.sampled_from(["\ud800", "Anne-Marie", "9e-1", "x:1e-5", '"http://', "https://a.example/b?c=1", "\x7f\u2028"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    floats,
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5) | st.lists(inner, max_size=3).map(tuple)
    ),
    max_leaves=25,
)
documents = st.dictionaries(texts, values, max_size=6)


def stdlib_compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def outcome(function, *args):
    try:
        return "value", function(*args)
    except Exception as exc:
        return "error", (type(exc).__name__, str(exc))


@settings(max_examples=800, deadline=None)
@given(values)
def test_fast_compact_json_is_the_standard_librarys_or_steps_aside(value):
    try:
        fast = fastjson.dumps(value)
    except fastjson.Unlike:
        return
    assert fast == stdlib_compact(value)


@settings(max_examples=500, deadline=None)
@given(documents)
def test_fast_canonical_json_is_the_standard_librarys_or_steps_aside(document):
    try:
        fast = fastjson.dumps_sorted(document)
    except fastjson.Unlike:
        return
    assert fast == canonical_json_stdlib(document).encode()


@settings(max_examples=500, deadline=None)
@given(documents)
def test_digest_is_the_one_of_the_standard_librarys_json(document):
    try:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        # Unpaired surrogates are hashed as they are (no webhook that parses fails its digest); valid text gives
        # the bytes of a plain encode().
        hashed = re.sub(r'"https?://[^"]*"', '""', text).encode("utf-8", "surrogatepass")
        expected = "value", hashlib.blake2b(hashed, digest_size=12).hexdigest()
    except Exception as exc:
        expected = "error", (type(exc).__name__, str(exc))
    assert outcome(content_fingerprint, document) == expected


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=8))
def test_encoded_message_is_the_standard_librarys_bytes_or_error(message):
    message = {"type": "track", **message}
    assert outcome(encode, message) == outcome(encode_stdlib, message)


def test_what_the_fast_path_cannot_write_identically_goes_to_the_standard_library():
    for value in [{"a": math.nan}, {"a": [math.inf]}, {"a": -math.inf}, {"a": 1e-05}, {"a": 2**64}, {"a": "\ud800"}]:
        with pytest.raises(fastjson.Unlike):
            fastjson.dumps_sorted(value)
    with pytest.raises(RenderError, match="Out of range float values are not JSON compliant"):
        encode({"type": "track", "properties": {"x": math.nan}})
    assert encode({"type": "track", "p": 1e-05}) == b'{"type":"track","p":1e-05}'
    assert content_fingerprint({"a": math.nan}) != content_fingerprint({"a": None})


url_texts = st.lists(
    st.sampled_from(['"', "http", "https", "://", "s", "x", "\\", '"http://', '"https://a', "é"]), max_size=20
).map("".join)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(url_texts, st.text()))
def test_urls_are_left_out_as_the_regular_expression_did(text):
    data = text.encode("utf-8", "surrogatepass")
    assert without_urls(data) == re.sub(rb'"https?://[^"]*"', b'""', data)


json_texts = st.one_of(
    values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    values.map(lambda v: json.dumps(v, indent=1)),
    st.text(alphabet='{}[],:"0123456789.eE-+ truefalsnNIfiy\\u\t\n', max_size=30),
    st.binary(max_size=30),
)


@settings(max_examples=1000, deadline=None)
@given(json_texts)
def test_body_is_read_as_the_standard_library_reads_it(body):
    body = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")

    def strict(text):
        try:
            return _strict_loads(text)
        except EnvelopeError as exc:
            raise EnvelopeError(str(exc)) from None

    fast, slow = outcome(parse_json, body), outcome(strict, body)
    if slow[0] == "value" and fast[0] == "value":
        assert json.dumps(fast[1], sort_keys=True) == json.dumps(slow[1], sort_keys=True)
        assert _types(fast[1]) == _types(slow[1])
    else:
        assert fast == slow or "nested deeper" in str(fast)


def _types(value):
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("path", fixture_paths(), ids=lambda p: p.stem)
def test_sample_webhooks_take_the_fast_path(path):
    document = json.loads(path.read_bytes())
    assert fastjson.loads(path.read_bytes()) == document
    assert fastjson.dumps_sorted(document["data"]) == canonical_json_stdlib(document["data"]).encode()


def test_under_the_playgrounds_memory_limit_a_message_too_big_to_encode_is_an_error_not_a_crash():
    """orjson meeting the limit ended the playground's process with a segmentation fault (one signed-in user
    leaked 76.7 MB of temporary folders in 15 s that way); confined, the standard library encodes and raises."""
    program = (
        "from engine.console.playground_worker import confine\n"
        "confine()\n"
        "from engine.mapping.message import RenderError, encode\n"
        "text = 'x' * (300 << 20)\n"
        "try:\n"
        "    encode({'type': 'track', 'event': 'e', 'properties': {'text': text}})\n"
        "except (MemoryError, RenderError) as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.strip() in {"MemoryError", "RenderError"}
