"""The envelope check: the quick path never accepts what the schema refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.aircall.envelope import EnvelopeError, clearly_valid, parse_webhook
from engine.aircall.events import EVENT_NAME, RESOURCE_NAME
from engine.schemas import mapping_file_validator, webhook_validator

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=80))
names = st.one_of(st.from_regex(RESOURCE_NAME, fullmatch=True), st.text(max_size=70), scalars)
events = st.one_of(st.from_regex(EVENT_NAME, fullmatch=True), st.text(max_size=140), scalars)
timestamps = st.one_of(st.integers(min_value=-10, max_value=253402300810), st.floats(), st.booleans(), scalars)
tokens = st.one_of(st.text(max_size=600), scalars)
datas = st.one_of(st.dictionaries(st.text(max_size=5), scalars, max_size=3), st.lists(scalars, max_size=2), scalars)
envelopes = st.fixed_dictionaries(
    {},
    optional={"resource": names, "event": events, "timestamp": timestamps, "token": tokens, "data": datas},
)


@settings(max_examples=3000, deadline=None)
@given(envelopes)
def test_clearly_valid_implies_valid_for_the_schema(envelope):
    if clearly_valid(envelope):
        assert webhook_validator().is_valid(envelope), envelope


def test_quick_path_accepts_the_sample_webhooks():
    from tests.conftest import FIXTURES

    assert all(clearly_valid(json.loads(p.read_text())) for p in FIXTURES.glob("*.json"))


def test_the_schemas_and_the_gateway_share_one_notion_of_an_event_name():
    envelope = webhook_validator().schema["properties"]
    assert envelope["event"]["pattern"] == f"^{EVENT_NAME}$"
    assert envelope["resource"]["pattern"] == f"^{RESOURCE_NAME}$"
    assert mapping_file_validator().schema["properties"]["aircall_event"]["pattern"] == f"^{EVENT_NAME}$"


def envelope(event: str, resource: str = "call") -> bytes:
    return json.dumps({"resource": resource, "event": event, "timestamp": 1, "token": "t", "data": {}}).encode()


@pytest.mark.parametrize(
    "event",
    ["user.created.v2", "call.some_future_event.v3", "transcription.created", "group_message.status_updated",
     "Call.Ended", "ai-agent.started.v10.beta"],
)  # fmt: skip
def test_any_sane_event_name_is_an_envelope_whether_known_or_not(event):
    assert parse_webhook(envelope(event)).event == event


@pytest.mark.parametrize(
    "event",
    ["call", "call.", ".ended", "call..ended", "call.ended\n", "call ended", "call.ended;drop", "a.b.c.d.e.f.g.h.i",
     "x" * 65 + ".y", "call.énded"],
)  # fmt: skip
def test_an_event_name_that_is_no_name_is_refused_in_one_line(event):
    with pytest.raises(EnvelopeError, match=r"^not an Aircall webhook: event: ") as refused:
        parse_webhook(envelope(event))
    assert "\n" not in str(refused.value)


def test_an_event_name_is_two_hundred_characters_and_eight_parts_at_most():
    longest = ".".join(["a" * 64, "b" * 64, "c" * 64, "d" * 5])  # 200 characters: mappings/<it>.yaml is a file name
    assert parse_webhook(envelope(longest)).event == longest
    assert parse_webhook(envelope("a.b.c.d.e.f.g.h")).event == "a.b.c.d.e.f.g.h"
    for name in (longest + "d", "a.b.c.d.e.f.g.h.i"):
        with pytest.raises(EnvelopeError, match=r"^not an Aircall webhook: event: "):
            parse_webhook(envelope(name))
