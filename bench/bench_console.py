"""How long each console page takes with 1,000,000 messages in the outbox.

    python bench/bench_console.py [--messages 1000000] [--samples 10] [--layout week|hour|both]

An outbox (SQLite) is filled with webhooks and the messages the shipped mappings make of them (sample bodies,
see tests/outbox_history.py) until it holds the asked number of messages, then `engine serve` is started on it
with the console on, and each page is fetched `--samples` times over loopback, signed in, a little more than a
second apart (so that the status counts, cached for a second like /healthz's, are read afresh each time).
Wall time per request, as the browser would wait for the HTML (static files aside: they are cached).

Layouts: `week`: the messages spread over the 7 days delivered messages are kept (ENGINE_RETENTION_DAYS), a
thousand still pending, 50 dead letters; `hour`: all of them received, mapped and delivered in the last hour,
the worst case for the per-minute chart.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_server import machine  # noqa: E402

from tests.harness import Engine  # noqa: E402
from tests.outbox_history import _samples, seed  # noqa: E402

TOKEN = "bench-console-token-0123456789"


def fill(path: Path, messages: int, layout: str) -> tuple[int, float]:
    per_webhook = sum(len(bodies) for _, _, bodies in _samples()) / len(_samples())
    webhooks = int(messages / per_webhook) + 64  # at least `messages`, whatever the rounding
    started = time.perf_counter()
    if layout == "week":
        written = seed(path, webhooks, 7 * 86400, time.time(), pending=1000, dead=50)
    else:
        written = seed(path, webhooks, 3300, time.time(), pending=0, dead=0)
    return written, time.perf_counter() - started


def signed_in(url: str) -> tuple[requests.Session, str]:
    session = requests.Session()
    form = session.get(f"{url}/console/sign-in", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    session.post(f"{url}/console/sign-in", data={"csrf": csrf, "token": TOKEN}, timeout=30).raise_for_status()
    page = session.get(f"{url}/console/", timeout=60)
    return session, re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def measure(layout: str, messages: int, samples: int) -> list[tuple[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as folder:
        tmp = Path(folder)
        written, seconds = fill(tmp / "outbox.sqlite3", messages, layout)
        size = (tmp / "outbox.sqlite3").stat().st_size
        print(f"{layout}: {written:,} messages written in {seconds:.0f} s; outbox {size / 2**30:.2f} GiB", flush=True)
        engine = Engine(tmp, None, ENGINE_CONSOLE_TOKEN=TOKEN).start()
        try:
            session, csrf = signed_in(engine.url)
            newest = int(re.search(r"/console/webhooks/(\d+)", session.get(f"{engine.url}/console/webhooks").text)[1])
            oldest = 1
            payload = (ROOT / "tests" / "fixtures" / "call.ended.json").read_text()
            check = {"file": "call.ended.yaml", "text": (ROOT / "mappings" / "call.ended.yaml").read_text(),
                     "payload": payload}  # fmt: skip
            pages = [
                ("status page (/console/)", "GET", "/console/", None),
                ("status panel refresh (/console/api/status)", "GET", "/console/api/status", None),
                ("recent webhooks (300 rows)", "GET", "/console/webhooks", None),
                ("a recent webhook and its messages", "GET", f"/console/webhooks/{newest}", None),
                ("the oldest webhook and its messages", "GET", f"/console/webhooks/{oldest}", None),
                ("dead letters", "GET", "/console/dead-letters", None),
                ("playground page", "GET", "/console/playground", None),
                ("playground check (validate + render)", "POST", "/console/api/playground", check),
                ("/healthz, for comparison", "GET", "/healthz", None),
            ]
            results = []
            for name, method, path, body in pages:
                times = []
                for _ in range(samples):
                    time.sleep(1.05)  # past the stats cache's second
                    started = time.perf_counter()
                    answer = session.request(method, f"{engine.url}{path}", json=body,
                                             headers={"x-csrf-token": csrf}, timeout=60)  # fmt: skip
                    times.append((time.perf_counter() - started) * 1000)
                    answer.raise_for_status()
                results.append((name, times))
                print(f"  {name}: median {statistics.median(times):.1f} ms, max {max(times):.1f} ms", flush=True)
            return results
        finally:
            engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--layout", choices=["week", "hour", "both"], default="both")
    args = parser.parse_args()
    print(machine())
    layouts = ["week", "hour"] if args.layout == "both" else [args.layout]
    tables = {layout: measure(layout, args.messages, args.samples) for layout in layouts}
    print()
    print("| page | " + " | ".join(f"{layout}: median ms | {layout}: max ms" for layout in layouts) + " |")
    print("|---|" + "---:|---:|" * len(layouts))
    for index, (name, _) in enumerate(tables[layouts[0]]):
        cells = []
        for layout in layouts:
            times = tables[layout][index][1]
            cells += [f"{statistics.median(times):.1f}", f"{max(times):.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
