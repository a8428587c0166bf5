"""JSON exactly as the standard library writes and reads it, at the speed of orjson and msgspec.

messageIds hash canonical JSON of the webhook's data, and Segment receives messages as compact JSON: both were
defined by Python's `json` module, and must stay byte for byte what it gives, whatever library makes them.
orjson writes the same bytes as `json.dumps(..., ensure_ascii=False)` for every string, key order, integer up to
64 bits and float, except two kinds of floats: those under 1e-4 (`1e-05` is `0.00001` or `1e-5` for orjson) and
those that are not finite (NaN and infinities: `null` for orjson, refused or `NaN` for the standard library).
So each function below also encodes the value with msgspec's MessagePack, which writes every float as the byte
0xcb and its 8 bytes: a search for 0xcb (memchr) finds every float of the value, and a few other bytes that are
read as floats too, harmlessly. Where one of them is small or not finite, the standard library writes the
value; where orjson refuses it (integers beyond 64 bits, keys that are not strings, lone surrogates, nesting
past 255) or would write it its own way (subclasses of str, int, dict, list; dates, dataclasses), too.
Reading: msgspec decodes what the standard library decodes, to equal values (integers of any size included);
what msgspec refuses is decoded again by the caller's standard-library path, for its exact errors and its
leniency (a byte order mark, UTF-16, escaped lone surrogates).
tests/test_fastjson.py checks all of this against the standard library on Hypothesis-generated values.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgspec
import orjson

_WRITE_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_CANONICAL_OPTIONS = _WRITE_OPTIONS | orjson.OPT_SORT_KEYS
_MSGPACK = msgspec.msgpack.Encoder()
_JSON_DECODER = msgspec.json.Decoder()
_FLOAT64 = struct.Struct(">d")
_INFINITIES = (math.inf, -math.inf)
_SMALL = 1e-4  # below it, orjson and the standard library spell floats differently


class Unlike(Exception):
    """The fast library cannot give the standard library's result here: use the standard library."""


def _refuse(value: Any) -> Any:
    raise TypeError


_enabled = True


def stdlib_only() -> None:
    """From now on in this process, every call answers Unlike: the standard library does all the work.

    For a process under a memory limit (the console playground's): when an allocation fails, orjson and msgspec
    end the process with a segmentation fault, where the standard library raises MemoryError.
    """
    global _enabled
    _enabled = False


def dumps(value: Any) -> bytes:
    """`json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()`, or Unlike."""
    return _checked(value, _WRITE_OPTIONS)


def dumps_sorted(value: Any) -> bytes:
    """The same with `sort_keys=True`, or Unlike."""
    return _checked(value, _CANONICAL_OPTIONS)


def loads(body: bytes | str) -> Any:
    """`json.loads(body)` for what msgspec decodes; Unlike for the rest (errors included)."""
    if not _enabled:
        raise Unlike
    try:
        return _JSON_DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError, ValueError, UnicodeDecodeError):
        raise Unlike from None


def _checked(value: Any, options: int) -> bytes:
    if not _enabled:
        raise Unlike
    try:
        text = orjson.dumps(value, default=_refuse, option=options)
        packed = _MSGPACK.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
        raise Unlike from None
    at = packed.find(b"\xcb")  # every float is there, and a few other bytes: each is read as a float
    while at >= 0:
        number = _FLOAT64.unpack_from(packed, at + 1)[0] if at + 9 <= len(packed) else 0.0
        if number != number or number in _INFINITIES or (number != 0.0 and -_SMALL < number < _SMALL):
            # Maybe a float, maybe a byte of some text or of another float (2661.82 holds one): the floats
            # themselves decide, walked one by one (rare, so the quick scan stays the rule).
            if _any_unlike_float(value):
                raise Unlike
            return text
        at = packed.find(b"\xcb", at + 1)
    return text


def _any_unlike_float(value: Any) -> bool:
    """Whether `value` holds a float the two libraries write differently (without recursing)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if item != item or item in _INFINITIES or (item != 0.0 and -_SMALL < item < _SMALL):
                return True
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
    return False
