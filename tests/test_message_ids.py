"""messageIds are a promise to Segment: the same webhook must give the same ids whatever library computes them.

Segment deduplicates on messageId, and the outbox on the webhook's key. An id that changed with a library's
version (or with a faster JSON encoder for the digest of the data) would send every redelivered or replayed
webhook twice. The digests below were recorded from the standard library's canonical JSON; they must never change.
"""

from __future__ import annotations

import pytest

from engine import fastjson
from engine.aircall.envelope import content_fingerprint, parse_webhook
from engine.mapping.load import load_mappings
from tests.conftest import MAPPINGS, fixture_paths

# The digest of data where canonical JSON has corner cases: float spellings, integers beyond 64 bits, characters
# outside ASCII and escapes, key order across scripts, URLs (left out of the digest), nesting.
GOLDEN_DIGESTS = {
    "floats": (
        {"a": 1e16, "b": 1.0, "c": -0.0, "d": 1e-05, "e": 2.5e-07, "f": 0.1, "g": 123456789012345680.0, "h": 5e-324},
        "67ea12b295f0c2f4eff5f0e5",
    ),
    "big ints": ({"id": 2**64, "neg": -(2**63) - 1, "huge": 10**40, "max": 2**64 - 1}, "2df9100759dc22482139959d"),
    "unicode": (
        {
            "name": 'Zoë "Zo" O\'Brien-Łukasiewicz 日本 😀',
            "ctl": "a\x00\x1f\x7f\u2028b\\",
            "é": 1,
            "z": 2,
            "\U0001f600": 3,
            "\ue000": 4,
        },
        "ae7ff7f09c864ccfb6adf255",
    ),
    "urls": (
        {"recording": "https://x.example/r.mp3?sig=1", "nested": [{"url": 'http://a"b'}], "text": "see https://x"},
        "f6acfba662fcc35d0d370497",
    ),
    "nesting": (
        {"b": [1, [2, {"d": None, "c": True}]], "a": {"z": False, "y": []}, "": {}},
        "1e807a884cc53a0e060021c3",
    ),
}


@pytest.fixture(scope="module")
def mappings():
    return load_mappings(MAPPINGS)


@pytest.mark.parametrize("path", fixture_paths(), ids=lambda p: p.stem)
def test_sample_webhook_gives_the_same_ids_and_bytes_whichever_library_writes_its_json(path, mappings, monkeypatch):
    # The ids themselves are pinned with the whole messages by the snapshots (tests/test_snapshots.py), for every
    # sample, with no table kept by hand: a change of id shows there as a change of what lands in Segment. Here,
    # that they are the ones the standard library's canonical JSON defines, not the faster encoder's.
    webhook = parse_webhook(path.read_bytes())
    fast = mappings.get(webhook.event).render_json(webhook)

    def unlike(*args, **kwargs):
        raise fastjson.Unlike

    monkeypatch.setattr(fastjson, "dumps_sorted", unlike)
    monkeypatch.setattr(fastjson, "dumps", unlike)
    again = parse_webhook(path.read_bytes())  # its fingerprint is computed afresh, by the standard library
    assert mappings.get(webhook.event).render_json(again) == fast
    assert len(fast) >= 1


@pytest.mark.parametrize("case", GOLDEN_DIGESTS, ids=str)
def test_digest_of_canonical_json_corner_cases_is_pinned(case):
    data, digest = GOLDEN_DIGESTS[case]
    assert content_fingerprint(data) == digest
