"""messageIds are a promise to Segment: the same webhook must give the same ids whatever library computes them.

Segment deduplicates on messageId, and the outbox on the webhook's key. An id that changed with a library's
version (or with a faster JSON encoder for the digest of the data) would send every redelivered or replayed
webhook twice. The ids below were recorded from the standard library's canonical JSON; they must never change.
"""

from __future__ import annotations

import pytest

from engine.aircall.envelope import content_fingerprint, parse_webhook
from engine.mapping.load import load_mappings
from tests.conftest import MAPPINGS, fixture_paths

# sample webhook -> (the webhook's key in the outbox, the messageIds of what its mapping sends)
GOLDEN_IDS = {
    "call.agent_declined": ("91b26b9a-38c3-5d85-8bb6-17a5497d1e5b", ["84e5033f-9a2b-595f-a36c-6e05e7fb036e"]),
    "call.answered": ("f2e4d78f-a273-59f7-abea-0e047080de1e", ["54af8b96-728a-5bab-b01e-451ea5af033d"]),
    "call.archived": ("742675fb-03d1-5fcb-8293-b9cd71d6b90a", ["d37e9661-0c27-50c3-9abc-9a7c67c177d8"]),
    "call.assigned": ("f3e208e7-7e81-5b0d-a3a4-46e145f726bd", ["589bbdee-4a05-5ecb-905b-a91fcf4859c8"]),
    "call.commented": ("c89b5a5a-2e1b-531d-8975-a98dfd55e753", ["9613fae1-ab7e-56a0-8fd2-e76c37207202"]),
    "call.created--outbound": ("b29860fa-bd12-50cf-a100-d389ca9c659b", ["98ef3001-e83f-5691-bb49-1eabeb7904c4"]),
    "call.created": ("a43f7f7b-f622-5503-b31e-34324f351254", ["269c5c2e-f77e-5b53-a684-4b5c5c9d0fb9"]),
    "call.ended--missed": ("7e0b36a6-a46e-5218-8ecb-b41d3fe2c67a", ["b670c02d-8973-5eb2-8aab-86402937a556"]),
    "call.ended--outbound": ("028a6e53-444d-5102-9979-298b9ab1e50f", ["c71ebe9e-8b13-578f-87bf-75d47e7aff23"]),
    "call.ended--unknown_caller": ("73990a80-382a-5e83-9a76-0bf8241b4c74", ["6f72540f-aaaf-59b8-95cb-32fc70be10de"]),
    "call.ended": ("286478e7-2727-525e-9461-c433b948e773", ["116f11da-aeac-5fc0-9a63-895628c1b92a"]),
    "call.hungup": ("4a5ff492-1ad2-5bc5-8e3b-a01e162d2462", ["ec828b7e-2028-5554-9089-4b9a2ce62219"]),
    "call.ringing_on_agent": ("c5b33b69-0e5d-57d7-8ff8-88f37c7fac78", ["20ecd5e9-6bc4-5d33-9f50-42808045c793"]),
    "call.tagged": ("742a1605-05e6-5549-bd8c-27af5c52e460", ["7d33f99e-34d0-5ef9-a158-f7902ec5287d"]),
    "call.transferred": ("23b0de08-4a09-5a26-911a-558da7175725", ["57944d07-f8f2-5456-9b5f-6218b0953e7f"]),
    "call.untagged": ("1da8b033-37a9-5448-a2e6-6f164b37364b", ["5c44b46c-f554-532c-8c47-e6a3cfb332a6"]),
    "call.voicemail_left": ("75e0dc64-87ed-5da0-b31f-238e56e8041b", ["4d3bfcd4-2793-5610-b0aa-669d6e8710ee"]),
    "contact.created": (
        "2b45341b-68c9-55bb-8452-0225812227c5",
        ["b151a357-a665-5777-a434-309ac3029c3e", "bcdca1f0-9b61-555c-93be-b220e961d9b6"],
    ),
    "contact.deleted": ("4a8b670a-b05e-545b-a28f-7938c3716a2e", ["7bf9070e-64a5-5623-9611-19125161cca1"]),
    "contact.updated--unicode_quotes_template": (
        "f01eecbf-404a-5c63-887a-9c4b00276e88",
        ["c60ca7b5-d595-5e46-b7f3-7026dbcba5ae", "1f944b04-6838-52b0-b07f-aba7413fbe07"],
    ),
    "contact.updated": (
        "aa78304f-ad76-543d-8ec6-2b503bf576c9",
        ["7caa1aa8-2aa1-5ef3-a50e-c3827a4d973c", "e41f1555-0971-5480-881d-7626be7439e4"],
    ),
    "number.closed": ("afac509f-2555-5fa4-9ae5-4d14aa756fff", ["097c3512-0403-56e8-971a-d9788a73d293"]),
    "number.created": ("cf156784-ad04-5f35-9c68-5d2788b401ae", ["e32212a0-19f6-5035-8366-b5a3898a4563"]),
    "number.deleted": ("451901aa-c493-5a3d-b197-a551b245b634", ["40fe38b7-f56a-5ee5-bce3-cc607891bfb3"]),
    "number.opened": ("3fc4d85b-fb16-5717-9928-e8f643ab3fcc", ["b2eb520a-0c9a-51b4-84ab-542970fc66ef"]),
    "user.closed": ("75b0f151-bc04-57fd-b210-2d13f643729d", ["39f2fc67-a162-582b-9ddc-d0b9304bbf35"]),
    "user.connected": ("0f669bb8-6bb3-5f09-8375-59d82690f0bb", ["30e9883e-9d53-551a-8ce3-2512283cc214"]),
    "user.created": (
        "8ebec2d9-1e4d-54fb-b1b7-bfef3e7cd92c",
        ["c78411a2-7dc7-54d2-bbda-43499a3dc42c", "16170966-c0a5-5491-a167-822287f3f65a"],
    ),
    "user.deleted": ("14353af2-65a4-5334-aa2d-2a376c4fc004", ["56f0df25-baa9-5064-84a2-369dd806fdd9"]),
    "user.disconnected": ("eed8896d-ffbf-5cd6-ba92-4c00d2ba74ea", ["981aeaa9-4c79-5b7d-8408-865a40eb2edd"]),
    "user.opened": ("15030fea-4a31-572a-9450-984f7817535d", ["68eefad7-d45c-5416-9a5e-31ad0db42de0"]),
}

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


def test_every_sample_webhook_has_pinned_ids():
    assert sorted(GOLDEN_IDS) == sorted(p.stem for p in fixture_paths())


@pytest.mark.parametrize("path", fixture_paths(), ids=lambda p: p.stem)
def test_sample_webhook_keeps_its_message_ids(path, mappings):
    webhook = parse_webhook(path.read_bytes())
    ids = [encoded.message_id for encoded in mappings.get(webhook.event).render_json(webhook)]
    # The first of each pair was the stored webhook's key, once derived like the messageIds; the outbox now keys
    # a stored webhook by a digest of its bytes (engine.outbox.base.stored_key), so only the ids are pinned.
    assert ids == GOLDEN_IDS[path.stem][1]


@pytest.mark.parametrize("case", GOLDEN_DIGESTS, ids=str)
def test_digest_of_canonical_json_corner_cases_is_pinned(case):
    data, digest = GOLDEN_DIGESTS[case]
    assert content_fingerprint(data) == digest
