"""Rendering throughput: the compiled mappings against the same messages built in plain Python, same run.

    python bench/bench_render.py [--seconds 3]

Three ways to turn the sample call webhooks into Segment messages, each timed in this process:
  engine        the shipped mappings as `engine` runs them: one compiled expression per mapping
  per-property  the same templates compiled one by one and rendered one at a time (the naive design)
  plain Python  a hand-written function building the identical messages (checked equal before timing)
All three finish messages the same way (messageId, timestamp, context), so the ratios isolate templating.
The engine is also timed over every sample webhook (all 26 events), single-threaded. Each render gets a fresh
Webhook, as each request does, so the digest of its data that goes into the messageId is paid every time (its
cost alone is printed last).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import timeit
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.aircall.envelope import Webhook, content_fingerprint, parse_webhook  # noqa: E402
from engine.mapping.load import load_mappings  # noqa: E402
from engine.mapping.templating import compile_expression, e164, iso8601, pluck, stable_id  # noqa: E402
from engine.segment.message import finish  # noqa: E402


def plain_call_properties(d: dict) -> dict:
    """What mappings/_call.yaml says, written by hand."""
    user = d.get("user") if isinstance(d.get("user"), dict) else {}
    contact = d.get("contact") if isinstance(d.get("contact"), dict) else {}
    number = d.get("number") if isinstance(d.get("number"), dict) else {}
    started, answered, ended = d.get("started_at"), d.get("answered_at"), d.get("ended_at")
    numeric = (int, float)
    return {
        "call_id": d.get("id"),
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
    }


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


def per_property(mapping) -> callable:
    """The same templates, each compiled and rendered on its own."""
    compiled = [(t.path, compile_expression(mapping._env, t.node)) for t in mapping.fields]

    def render(webhook: Webhook) -> list[dict]:
        variables = webhook.template_variables()
        spec = {"type": "track", "properties": {}}
        for path, evaluate in compiled:
            value = evaluate(variables)
            if path[1] == "properties":
                spec["properties"][path[2]] = value
            else:
                spec[path[1]] = value
        return [finish(spec, 0, webhook)]

    return render


def rate(render, webhooks: list[Webhook], seconds: float) -> float:
    """Events per second over at least `seconds`, best of three rounds."""
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for webhook in webhooks:
                render(replace(webhook))  # a new object: its fingerprint is not cached from the last round
            count += len(webhooks)
        best = max(best, count / elapsed)
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
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    mappings = load_mappings(ROOT / "mappings")
    samples = [parse_webhook(p.read_bytes()) for p in sorted((ROOT / "tests/fixtures").glob("*.json"))]
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
        engine_out = mappings.get(webhook.event).render(webhook)
        assert engine_out == plain_call_message(webhook), webhook.event
        assert engine_out == per_property(mappings.get(webhook.event))(webhook), webhook.event

    def engine(webhook: Webhook) -> list:
        return mappings.get(webhook.event).render(webhook)

    naive = {event: per_property(mappings.get(event)) for event in plain_events}
    results = {
        "engine, call events": rate(engine, calls, args.seconds),
        "per-property, call events": rate(lambda w: naive[w.event](w), calls, args.seconds),
        "plain Python, call events": rate(plain_call_message, calls, args.seconds),
        "engine, all 26 events": rate(engine, samples, args.seconds),
    }
    baseline = results["plain Python, call events"]
    print(
        f"# {platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
        f"{cpu_model()}, {os.cpu_count()} cores, one thread used"
    )
    print(f"{'variant':<28}{'events/s':>12}{'µs/event':>10}{'vs plain':>10}")
    for name, value in results.items():
        print(f"{name:<28}{value:>12,.0f}{1e6 / value:>10.1f}{value / baseline:>10.2f}")
    rounds = 2000
    digest = min(timeit.repeat(lambda: [content_fingerprint(w.data) for w in calls], number=rounds, repeat=3))
    print(f"of which the messageId's digest of the data: {digest / rounds / len(calls) * 1e6:.1f} µs/event")


if __name__ == "__main__":
    main()
