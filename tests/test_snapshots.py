"""Every sample webhook through the shipped mappings: the whole Segment messages, pinned by syrupy.

A snapshot change in a diff is a change of what lands in users' warehouses: explain it in the commit.
"""

from __future__ import annotations

import json

import pytest

from engine.aircall.envelope import parse_webhook
from engine.aircall.events import known_events
from engine.mapping.load import load_mappings
from engine.mapping.message import MAX_MESSAGE_BYTES
from engine.schemas import segment_message_validator
from tests.conftest import MAPPINGS, fixture_paths


@pytest.fixture(scope="module")
def mappings():
    return load_mappings(MAPPINGS)


@pytest.mark.parametrize("path", fixture_paths(), ids=lambda p: p.stem)
def test_sample_webhook_renders_to_pinned_segment_messages(path, mappings, snapshot):
    webhook = parse_webhook(path.read_bytes())
    encoded = mappings.get(webhook.event).render_json(webhook)
    messages = [json.loads(body) for _, body in encoded]
    assert messages == snapshot
    for (message_id, body), message in zip(encoded, messages, strict=True):
        assert message_id == message["messageId"]
        assert list(segment_message_validator().iter_errors(message)) == []
        assert len(body) <= MAX_MESSAGE_BYTES


def test_every_aircall_event_has_a_sample_webhook_and_a_mapping(mappings):
    sampled = {parse_webhook(p.read_bytes()).event for p in fixture_paths()}
    assert sorted(known_events() - sampled) == []
    assert sorted(known_events() - mappings.by_event.keys()) == []
    assert sorted(mappings.by_event.keys() - sampled) == []  # a mapping added without a sample of its own


def test_default_mappings_send_a_track_named_after_the_aircall_event(mappings):
    for path in fixture_paths():
        webhook = parse_webhook(path.read_bytes())
        track = mappings.get(webhook.event).render(webhook)[0]
        # V2 user events land under their V1 names, so that a team's tables continue across Aircall's migration
        expected = webhook.event.removesuffix(".v2") if webhook.resource == "user" else webhook.event
        assert (track["type"], track["event"]) == ("track", expected), path.name
        if webhook.resource == "user":
            assert track["properties"]["aircall_event"] == webhook.event  # which of the two it was
