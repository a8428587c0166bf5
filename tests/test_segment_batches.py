"""Batch requests stay within Segment's 500 KB, and Retry-After is read in both of its forms."""

from __future__ import annotations

import email.utils
import json

from engine.retry import retry_after
from engine.segment.client import MAX_BATCH_BYTES, batch_body
from engine.segment.destination import split_batches


def test_batches_stay_under_500_kb_and_keep_every_message_in_order():
    sizes = [30_000] * 40 + [200] * 3000 + [32_000] * 5
    bodies = [b'{"m":"' + b"x" * (size - 8) + b'"}' for size in sizes]
    runs = split_batches([len(b) for b in bodies], MAX_BATCH_BYTES)
    assert [i for run in runs for i in range(len(sizes))[run]] == list(range(len(sizes)))
    for run in runs:
        request = batch_body(bodies[run], 1_700_000_000)
        assert len(request) <= MAX_BATCH_BYTES
        assert len(json.loads(request)["batch"]) == run.stop - run.start
    assert len(runs) < 12  # and not needlessly many requests


def test_batch_body_is_the_stored_bytes_with_sent_at():
    body = batch_body([b'{"a":1}', b'{"b":2}'], 1_700_000_000.5)
    assert json.loads(body) == {"batch": [{"a": 1}, {"b": 2}], "sentAt": "2023-11-14T22:13:20.500Z"}


def test_retry_after_seconds_or_http_date():
    assert retry_after("7") == 7.0
    later = email.utils.formatdate(1_700_000_030, usegmt=True)
    assert 29 <= retry_after(later, now=1_700_000_000) <= 30
    assert retry_after(None) is None and retry_after("soon") is None


def test_a_retry_after_of_digits_from_another_script_is_unreadable_not_an_error():
    assert retry_after("²") is None and retry_after("٣") is None
