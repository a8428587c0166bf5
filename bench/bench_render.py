"""Rendering throughput: the compiled mappings against the same messages built in plain Python, same run.

    python bench/bench_render.py [--seconds 3]

Three ways to turn the sample call webhooks into the bytes Segment receives, each timed in this process:
  engine        the shipped mappings as `engine` runs them: each compiled to one Python function (mapping.compiler)
  Jinja         the same mappings on Jinja's runtime (one compiled Jinja expression per mapping: the old engine)
  plain Python  a hand-written function building the identical messages (checked byte for byte before timing)
All three finish and encode messages the same way (messageId, timestamp, context, engine.message.encode), so the
ratios isolate templating. The engine is also timed over every sample webhook (every event), single-threaded.
Each render gets a fresh Webhook, as each request does, so the digest of its data that goes into the messageId
is paid every time. Last, the JSON work of a webhook, the standard library against what the engine uses.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
import timeit
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.aircall.envelope import (  # noqa: E402
    _URL_STRING,
    Webhook,
    _strict_loads,
    canonical_json_stdlib,
    content_fingerprint,
    parse_json,
    parse_webhook,
)
from engine.mapping.load import load_mappings  # noqa: E402
from engine.mapping.message import Encoded, encode, encode_stdlib, finish  # noqa: E402
from engine.mapping.templating import e164, iso8601, pluck, stable_id  # noqa: E402


def plain_call_properties(d: dict) -> dict:
    """What mappings/_call.yaml says, written by hand."""
    user = d.get("user") if isinstance(d.get("user"), dict) else {}
    contact = d.get("contact") if isinstance(d.get("contact"), dict) else {}
    number = d.get("number") if isinstance(d.get("number"), dict) else {}
    started, answered, ended = d.get("started_at"), d.get("answered_at"), d.get("ended_at")
    participants = d.get("participants") or d.get("conference_participants")
    numeric = (int, float)
    return {
        "call_id": d.get("id"),
        "call_uuid": d.get("call_uuid") or d.get("sid"),
        "direction": d.get("direction"),
        "status": d.get("status"),
        "started_at": iso8601(started),
        "answered_at": iso8601(answered),
        "ended_at": iso8601(ended),
        "answered": answered is not None,
        "duration_seconds": d.get("duration"),
        "wait_seconds": answered - started if isinstance(answered, numeric) and isinstance(started, numeric) else None,
        "talk_seconds": ended - answered if isinstance(ended, numeric) and isinstance(answered, numeric) else None,
        "missed_call_reason": d.get("missed_call_reason"),
        "external_number": e164(d.get("raw_digits")),
        "country_code": d.get("country_code_a2"),
        "archived": d.get("archived"),
        "cost": _float(d.get("cost")) if isinstance(d.get("cost"), str) and d.get("cost") != "" else None,
        "has_recording": d.get("recording") is not None or d.get("recording_short_url") is not None,
        "recording_short_url": d.get("recording_short_url"),
        "has_voicemail": d.get("voicemail") is not None or d.get("voicemail_short_url") is not None,
        "voicemail_short_url": d.get("voicemail_short_url"),
        "number_id": number.get("id"),
        "number_name": number.get("name"),
        "number_digits": e164(number.get("digits")),
        "number_country": number.get("country"),
        "number_is_ivr": number.get("is_ivr"),
        "user_id": user.get("id"),
        "user_name": user.get("name"),
        "user_email": user.get("email"),
        "contact_id": contact.get("id"),
        "contact_first_name": contact.get("first_name"),
        "contact_last_name": contact.get("last_name"),
        "contact_company_name": contact.get("company_name"),
        "contact_email": (pluck(contact.get("emails"), "value") or [None])[0],
        "team_ids": pluck(d.get("teams"), "id"),
        "team_names": pluck(d.get("teams"), "name"),
        "tags": pluck(d.get("tags"), "name"),
        "ivr_options": pluck(d.get("ivr_options_selected"), "title"),
        "participants_count": len(pluck(participants, "type")),
        "participant_user_ids": pluck(participants, "id", type="user"),
        "external_participants_count": len(pluck(participants, "type", type="external")),
    }


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0  # Jinja's float filter


def plain_call_json(webhook: Webhook) -> list[Encoded]:
    return [Encoded(message["messageId"], encode(message)) for message in plain_call_message(webhook)]


def plain_call_message(webhook: Webhook) -> list[dict]:
    d = webhook.data
    user = d.get("user") if isinstance(d.get("user"), dict) else {}
    contact = d.get("contact") if isinstance(d.get("contact"), dict) else {}
    spec = {
        "type": "track",
        "event": webhook.event,
        "userId": user.get("id"),
        "anonymousId": stable_id("contact", contact.get("id"))
        or stable_id("phone", e164(d.get("raw_digits")))
        or stable_id("call", d.get("id")),
        "properties": plain_call_properties(d),
    }
    return [finish(spec, 0, webhook)]


def rates(variants: dict[str, tuple], seconds: float, rounds: int = 6) -> dict[str, float]:
    """Events per second of each variant, the best of `rounds` rounds, the variants taking turns in each round so
    that the load of whatever else runs on the machine falls on all of them alike."""
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, (render, webhooks) in variants.items():
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / rounds:
                for webhook in webhooks:
                    render(replace(webhook))  # a new object: its fingerprint is not cached from the last round
                count += len(webhooks)
            best[name] = max(best[name], count / elapsed)
    return best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant (the run takes about 6x this)")
    args = parser.parse_args()
    mappings = load_mappings(ROOT / "mappings")
    on_jinja = load_mappings(ROOT / "mappings", runtime="jinja")
    bodies = [p.read_bytes() for p in sorted((ROOT / "tests/fixtures").glob("*.json"))]
    samples = [parse_webhook(body) for body in bodies]
    # The events whose mapping is _call.yaml alone, where the hand-written baseline is exact.
    plain_events = {
        "call.created",
        "call.answered",
        "call.hungup",
        "call.ended",
        "call.archived",
        "call.tagged",
        "call.untagged",
        "call.ringing_on_agent",
        "call.agent_declined",
        "call.voicemail_left",
    }
    calls = [w for w in samples if w.event in plain_events]
    for webhook in calls:
        engine_out = mappings.get(webhook.event).render_json(webhook)
        assert engine_out == plain_call_json(webhook), webhook.event
        assert engine_out == on_jinja.get(webhook.event).render_json(webhook), webhook.event
    for webhook in samples:
        assert mappings.get(webhook.event).render_json(webhook) == on_jinja.get(webhook.event).render_json(webhook)

    # Each variant finds what renders an event the same way: a dict lookup, in a function of the webhook.
    compiled_by_event, jinja_by_event = mappings.by_event, on_jinja.by_event
    plain_by_event = dict.fromkeys(plain_events, plain_call_json)

    def engine(webhook: Webhook) -> list:
        return compiled_by_event[webhook.event].render_json(webhook)

    def jinja(webhook: Webhook) -> list:
        return jinja_by_event[webhook.event].render_json(webhook)

    def plain(webhook: Webhook) -> list:
        return plain_by_event[webhook.event](webhook)

    results = rates(
        {
            "engine, call events": (engine, calls),
            "Jinja runtime, call events": (jinja, calls),
            "plain Python, call events": (plain, calls),
            "engine, every sample webhook": (engine, samples),
            "Jinja runtime, every sample webhook": (jinja, samples),
        },
        args.seconds * 5,
    )
    baseline = results["plain Python, call events"]
    print(
        f"# {platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
        f"{cpu_model()}, {os.cpu_count()} cores, one thread used"
    )
    print(f"{'variant':<30}{'events/s':>12}{'µs/event':>10}{'vs plain':>10}")
    for name, value in results.items():
        print(f"{name:<30}{value:>12,.0f}{1e6 / value:>10.1f}{value / baseline:>10.2f}")
    engine_over_jinja = results["engine, call events"] / results["Jinja runtime, call events"]
    print(f"engine / Jinja runtime, call events: {engine_over_jinja:.2f}x")

    def stdlib_digest(data: dict) -> str:
        text = _URL_STRING.sub('""', canonical_json_stdlib(data)).encode()
        return hashlib.blake2b(text, digest_size=12).hexdigest()

    messages = [m for w in calls for m in mappings.get(w.event).render(w)]
    call_bodies = [body for body, w in zip(bodies, samples, strict=True) if w.event in plain_events]
    data_bytes = sum(len(canonical_json_stdlib(w.data).encode()) for w in calls) / len(calls)
    print(f"\n{'JSON work, per call webhook (µs)':<48}{'stdlib':>9}{'engine':>9}{'ratio':>8}")
    for name, slow, fast, items in [
        (f"digest of the data ({data_bytes:,.0f} B)", stdlib_digest, content_fingerprint, [w.data for w in calls]),
        ("encoding the message", encode_stdlib, encode, messages),
        ("parsing the body", _strict_loads, parse_json, call_bodies),
    ]:
        slow_us, fast_us = per_item(slow, items), per_item(fast, items)
        print(f"{name:<48}{slow_us:>9.2f}{fast_us:>9.2f}{slow_us / fast_us:>7.1f}x")


def per_item(function, items: list, rounds: int = 2000) -> float:
    """µs per call of function on each item, best of five."""
    best = min(timeit.repeat(lambda: [function(item) for item in items], number=rounds, repeat=5))
    return best / rounds / len(items) * 1e6


if __name__ == "__main__":
    main()
