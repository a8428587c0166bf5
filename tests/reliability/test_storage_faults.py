"""The outbox's disk full or read-only: webhooks get 503 (Aircall retries), nothing is acknowledged that was
not stored, and the server recovers by itself once the disk is writable again."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness import call_webhook, count, expected_ids


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs for the outbox, to fill up or make read-only; root and mount(8) are needed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): storage faults not tested")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def post_range(server, numbers) -> dict[int, int]:
    return {n: server.post(call_webhook(n)).status_code for n in numbers}


def check_delivered(segment, acknowledged: list[int]) -> None:
    expected = {i for n in acknowledged for i in expected_ids(call_webhook(n))}
    received = segment.wait_for_ids(expected)
    assert received["duplicates"] == 0


def test_full_disk_gets_503_then_recovers_by_itself(engine_server, segment, small_disk):
    server = engine_server(ENGINE_DB=str(small_disk / "outbox.sqlite3"))
    answers = post_range(server, [0])
    filler = small_disk / "filler"
    with open(filler, "wb") as out:  # fill the disk to the last byte
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    full = post_range(server, range(1, 30))
    assert 503 in full.values() and set(full.values()) <= {200, 503}
    refused = server.post(call_webhook(1000))
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "5")
    assert refused.json() == {"status": "error", "reason": "outbox unavailable; retry later"}
    filler.unlink()
    again = post_range(server, [99, *[n for n, s in full.items() if s == 503]])  # Aircall's retries
    assert set(again.values()) == {200}
    answers |= full | again
    check_delivered(segment, [n for n, s in answers.items() if s == 200])
    assert 'outcome="unavailable"' in server.metrics()
    count("storage faults: webhooks refused with 503 on a full disk", list(full.values()).count(503))


def test_read_only_outbox_gets_503_then_recovers_by_itself(engine_server, segment, tmp_path):
    server = engine_server()
    answers = post_range(server, range(0, 5))
    # The files made unwritable (immutable, which binds root too). Not the -shm file: SQLite maps it into
    # memory, and a write to an unwritable mapping is a crash (SIGBUS), not an error; no disk does that.
    files = [str(server.db), f"{server.db}-wal"]
    if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system: read-only outbox not tested")
    try:
        read_only = post_range(server, range(5, 15))
        assert set(read_only.values()) == {503}
        assert server.health()["status"] == "ok"  # reads still work: the operator can see what is wrong
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    again = post_range(server, range(5, 15))  # Aircall's retries
    assert set(again.values()) == {200}
    check_delivered(segment, [n for n, s in (answers | again).items() if s == 200])
    count("storage faults: webhooks refused with 503 on a read-only outbox", len(read_only))
