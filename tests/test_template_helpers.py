"""The mapping helpers' fast paths give what their plain definitions give."""

from __future__ import annotations

import re
import time
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.mapping.templating import stable_id
from engine.values import _ISO_FORMAT, e164, iso8601, uuid5


def iso_by_gmtime(seconds: int) -> str:
    return _ISO_FORMAT % (*time.gmtime(seconds)[:6], 0)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.integers(min_value=0, max_value=253402300799), st.integers(1_600_000_000, 1_900_000_000)))
def test_whole_unix_seconds_are_formatted_as_gmtime_gives_them(seconds):
    assert iso8601(seconds) == iso_by_gmtime(seconds)


def test_unix_seconds_at_the_edges():
    for seconds in (0, 59, 60, 3599, 86399, 86400, 951782400, 1700000000, 253402300799):
        assert iso8601(seconds) == iso_by_gmtime(seconds)
    assert iso8601(253402300800) == "10000-01-01T00:00:00.000Z"  # past year 9999: the general path
    assert iso8601(-1) == "1969-12-31T23:59:59.000Z"
    assert iso8601(True) is None and iso8601(1.5) == "1970-01-01T00:00:01.500Z"


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="+0123456789 ()-.x٣"), st.integers(), st.floats()))
def test_e164_keeps_the_ascii_digits_as_the_expression_did(value):
    text = str(value)
    digits = re.sub(r"[^0-9]", "", text)
    expected = None if not digits else ("+" + digits if text.lstrip().startswith("+") else digits)
    assert e164(value) == expected


@settings(max_examples=500, deadline=None)
@given(st.uuids(), st.text())
def test_uuid5_is_the_standard_librarys(namespace, name):
    name = name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert uuid5(namespace, name) == str(uuid.uuid5(namespace, name))


def test_stable_id_is_none_when_a_part_is_missing():
    assert stable_id() is None and stable_id("contact", None) is None and stable_id("phone", "") is None
    assert stable_id("contact", 42) == stable_id("contact", "42") != stable_id("contact", 43)
