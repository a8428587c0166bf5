"""A message per element of a list (`each`) and text cut into ordered parts (`split_long`): through `engine
render` and `engine validate` as a user writes them, and split_long's promise for any text Hypothesis makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.aircall.envelope import parse_webhook
from engine.mapping.load import MAX_MESSAGES, load_mappings
from engine.mapping.message import RenderError
from engine.mapping.templating import split_long

HEAD = (
    "aircall_event: transcription.created\n"
    "segment:\n"
    "  type: track\n"
    "  event: transcription.created\n"
    "  anonymousId: \"{{ stable_id('call', data.call_id) }}\"\n"
    "  properties:\n"
    '    call_id: "{{ data.call_id }}"\n'
)
EACH = (
    "also:\n"
    "  - type: track\n"
    "    event: transcription.utterance\n"
    "    each: \"{{ data.utterances | split_long('text', 100) }}\"\n"
    "    anonymousId: \"{{ stable_id('call', data.call_id) }}\"\n"
    "    properties:\n"
    '      index: "{{ index }}"\n'
    '      position: "{{ item.position }}"\n'
    '      text: "{{ item.text }}"\n'
    '      part: "{{ item.part }}"\n'
    '      parts: "{{ item.parts }}"\n'
    '      call_id: "{{ data.call_id }}"\n'
)
LONG = "a long one, long enough to be cut in two parts at least; " * 3


def folder(tmp_path: Path, text: str) -> Path:
    mappings = tmp_path / "mappings"
    mappings.mkdir(exist_ok=True)
    (mappings / "transcription.created.yaml").write_text(text)
    return mappings


def webhook_file(tmp_path: Path, utterances: object) -> Path:
    data = {"id": 5, "call_id": 77, "utterances": utterances}
    envelope = {"resource": "conversation_intelligence", "event": "transcription.created", "timestamp": 1763985700,
                "token": "t", "data": data}  # fmt: skip
    path = tmp_path / "webhook.json"
    path.write_text(json.dumps(envelope))
    return path


def test_each_sends_one_message_per_element_in_order_and_long_text_in_parts(engine, tmp_path):
    mappings = folder(tmp_path, HEAD + EACH)
    run = engine(
        "render", str(webhook_file(tmp_path, [{"text": "hello"}, {"text": LONG}])), "--mappings", str(mappings)
    )
    assert run.code == 0, run.err
    outline, *parts = run.json()
    assert (outline["event"], outline["properties"]) == ("transcription.created", {"call_id": 77})
    assert [m["event"] for m in parts] == ["transcription.utterance"] * len(parts)
    described = [(p["index"], p["position"], p["part"], p["parts"]) for p in (m["properties"] for m in parts)]
    assert described[0] == (0, 0, 1, 1)
    assert [d[1:] for d in described[1:]] == [(1, n, len(parts) - 1) for n in range(1, len(parts))]
    assert "".join(m["properties"]["text"] for m in parts[1:]) == LONG
    assert all(len(m["properties"]["text"].encode()) <= 100 for m in parts)
    assert len({m["messageId"] for m in run.json()}) == len(run.json())


def test_a_missing_or_empty_list_sends_no_message_of_it(engine, tmp_path):
    mappings = folder(tmp_path, HEAD + EACH)
    for utterances in (None, []):
        run = engine("render", str(webhook_file(tmp_path, utterances)), "--mappings", str(mappings))
        assert run.code == 0, run.err
        assert [m["event"] for m in run.json()] == ["transcription.created"]


def test_adding_a_message_with_each_leaves_the_ids_of_the_others_as_they_were(tmp_path):
    webhook = parse_webhook(webhook_file(tmp_path, [{"text": "hello"}]).read_bytes())
    before = load_mappings(folder(tmp_path, HEAD)).get("transcription.created").render_json(webhook)
    after = load_mappings(folder(tmp_path, HEAD + EACH)).get("transcription.created").render_json(webhook)
    assert after[0] == before[0] and len(after) == 2
    again = load_mappings(folder(tmp_path, HEAD + EACH)).get("transcription.created").render_json(webhook)
    assert again == after  # the same webhook, the same ids: Segment deduplicates a redelivery


def test_item_outside_a_message_with_each_is_refused_on_its_line(engine, tmp_path):
    mappings = folder(tmp_path, HEAD + '    text: "{{ item.text }}"\n')
    run = engine("validate", str(mappings))
    assert run.code == 1
    assert run.out.splitlines()[0] == (
        f"{mappings}/transcription.created.yaml:8:11: unknown name 'item' in template; templates can read data, "
        "event, fetched, resource, timestamp (item and index are read only in a message that has `each`)"
    )


def validate_on_a_sample(engine, tmp_path: Path, text: str):
    """`engine validate` of a folder holding this mapping, against one sample webhook with one utterance."""
    mappings = folder(tmp_path, text)
    samples = tmp_path / "samples"
    samples.mkdir()
    webhook_file(samples, [{"text": "hello"}])
    return engine("validate", str(mappings), "--fixtures", str(samples))


def test_each_that_is_not_a_list_is_a_finding_that_says_so(engine, tmp_path):
    text = HEAD + EACH.replace("data.utterances | split_long('text', 100)", "data.call_id")
    run = validate_on_a_sample(engine, tmp_path, text)
    assert run.code == 1
    assert "transcription.created.yaml: also[0].each rendered a int, not a list" in run.out


def test_split_long_with_a_size_too_small_is_a_finding_not_a_traceback(engine, tmp_path):
    run = validate_on_a_sample(
        engine, tmp_path, HEAD + EACH.replace("split_long('text', 100)", "split_long('text', 3)")
    )
    assert run.code == 1 and "Traceback" not in run.out + run.err
    assert "split_long: max_bytes must be a whole number of at least 64" in run.out


def test_more_messages_than_a_webhook_may_make_is_a_render_error(tmp_path):
    mapping = load_mappings(folder(tmp_path, HEAD + EACH)).get("transcription.created")
    webhook = parse_webhook(webhook_file(tmp_path, [{"text": "x"}] * (MAX_MESSAGES + 1)).read_bytes())
    with pytest.raises(RenderError, match="a webhook makes at most 10,000 messages"):
        mapping.render_json(webhook)


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.one_of(st.text(max_size=400), st.text(alphabet="é日😀 \n", max_size=300)), max_size=5),
    max_bytes=st.integers(min_value=64, max_value=200),
)
def test_split_long_parts_put_back_together_are_the_text_and_each_fits(texts, max_bytes):
    items = [{"text": text, "n": i} for i, text in enumerate(texts)]
    pieces = split_long(items, "text", max_bytes)
    for position, text in enumerate(texts):
        mine = [p for p in pieces if p["position"] == position]
        assert [p["part"] for p in mine] == list(range(1, len(mine) + 1))
        assert {p["parts"] for p in mine} == {len(mine)} and {p["n"] for p in mine} == {position}
        assert "".join(p["text"] for p in mine) == text
        assert all(len(p["text"].encode("utf-8", "surrogatepass")) <= max_bytes for p in mine)
    assert [p["position"] for p in pieces] == sorted(p["position"] for p in pieces)
    assert items == [{"text": text, "n": i} for i, text in enumerate(texts)]  # the webhook's data is not changed
