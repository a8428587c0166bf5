"""Server benchmarks, each against a baseline measured in the same run on the same machine.

    python bench/bench_server.py ingest   # engine vs a bare Starlette app, concurrency 32; then 1,000 req/s paced
    python bench/bench_server.py wrk      # wrk -t1 -c32: engine vs bare Starlette vs the smallest durable app
    python bench/bench_server.py e2e      # wrk load with delivery on: acknowledged *and* delivered per second
    python bench/bench_server.py drain    # 100,000 queued messages into the fake Segment, vs segment-analytics-python
    python bench/bench_server.py memory   # server RSS with a 1,000,000-message backlog vs an empty outbox
    python bench/bench_server.py memory-webhooks  # the same with 1,000,000 stored webhooks still to map
    python bench/bench_server.py catch-up # a backlog to map: p99 at 1,000 req/s meanwhile, then the rate it maps
    python bench/bench_server.py lag      # a burst with mapping running: ingest vs the durable app, then the lag left
    python bench/bench_server.py priorities --priorities 0,10,19,idle  # the same, one engine per processing priority

BENCH_PROCESSING_NICENESS (the bench only, not a setting of the engine): the niceness every thread of the engine's
processing process is set to once the server answers, in place of the one it set itself (engine/processing/child.py,
PROCESSING_NICENESS); `idle` puts them in SCHED_IDLE instead. To compare priorities in one tree, taking turns.

`drain` needs `pip install segment-analytics-python` (the comparison only; the engine does not use it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import run_load  # noqa: E402

from engine.aircall.envelope import webhook_from_json  # noqa: E402
from engine.mapping.load import load_mappings  # noqa: E402
from engine.outbox import NewMessage, SqliteOutbox, stored_webhook  # noqa: E402
from tests.harness import TOKEN, WRITE_KEY, FakeSegment, base_env, free_port, wait_for  # noqa: E402

SAMPLE = json.loads((ROOT / "tests/fixtures/call.ended.json").read_text())


def call_body(n: int) -> bytes:
    envelope = json.loads(json.dumps(SAMPLE))
    envelope["data"]["id"] = 500_000_000 + n
    return json.dumps(envelope).encode()


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"CPython {platform.python_version()}, {platform.machine()}, {cpu}, {os.cpu_count()} cores"


def start(args: list[str], env: dict[str, str], port: int, health: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}{health}", timeout=1).status_code < 500, 30, what=health)
    return proc


def engine_server(tmp: Path, port: int, **settings: str) -> subprocess.Popen[bytes]:
    env = base_env() | {"AIRCALL_WEBHOOK_TOKEN": TOKEN, "ENGINE_DB": str(tmp / "outbox.sqlite3"),
                        "ENGINE_LOG_LEVEL": "warning"} | settings  # fmt: skip
    engine = Path(sys.executable).parent / "engine"
    proc = start([str(engine), "serve", "--port", str(port)], env, port, "/healthz", tmp / "engine.log")
    set_processing_priority(proc.pid)
    return proc


def processing_threads(server_pid: int) -> list[int]:
    """Every thread of the server's processing process(es)."""
    tids = []
    for pid in children(server_pid):
        try:
            if b"engine.processing.child" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            tids.extend(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
    return tids


def set_processing_priority(server_pid: int, wanted: str | None = None) -> None:
    """`wanted` or else BENCH_PROCESSING_NICENESS, if set: the processing threads' niceness (or SCHED_IDLE), set
    from outside. Threads the processing process starts later inherit it from the thread that starts them."""
    # The server answers before its child has started: wait for the child's second thread, which it starts after
    # its own os.nice (else that would add to what is set here, or the niceness printed be the start's).
    wait_for(lambda: len(processing_threads(server_pid)) >= 2, 30, 0.05, what="the processing process started")
    time.sleep(0.2)
    wanted = wanted or os.environ.get("BENCH_PROCESSING_NICENESS")
    if not wanted:
        return
    tids = processing_threads(server_pid)
    for tid in tids:
        if wanted == "idle":
            os.setpriority(os.PRIO_PROCESS, tid, 0)
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, int(wanted))


def processing_priority(server_pid: int) -> str:
    """The processing threads' niceness as they are now (SCHED_IDLE shown as `idle`), to print with the figures."""
    seen = set()
    for tid in processing_threads(server_pid):
        try:
            fields = Path(f"/proc/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        policy = int(fields[38])  # field 41 of stat: the scheduling policy; 5 is SCHED_IDLE
        seen.add("idle" if policy == 5 else fields[16])  # field 19: the niceness
    return "processing threads at niceness " + "/".join(sorted(seen))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


# -- ingest ---------------------------------------------------------------------------------------------------


def ingest(total: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=ROOT / "var" if (ROOT / "var").is_dir() else None))
    bodies = [call_body(n) for n in range(total * 4)]
    bare_port, engine_port = free_port(), free_port()
    bare = start([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(bare_port), "--log-level",
                  "warning", "--app-dir", str(ROOT / "bench")], base_env(), bare_port, "/webhooks/aircall",
                 tmp / "bare.log")  # fmt: skip
    engine = engine_server(tmp, engine_port)
    try:
        rounds: dict[str, list] = {"bare": [], "engine": []}
        offset = 0
        for _ in range(2):  # interleaved, best of two: both see the same machine state
            for name, port in (("bare", bare_port), ("engine", engine_port)):
                result = asyncio.run(run_load("127.0.0.1", port, "/webhooks/aircall",
                                              lambda n, o=offset: bodies[o + n], total, concurrency=32))  # fmt: skip
                assert set(result.statuses) == {200}, result.statuses
                rounds[name].append(result)
                offset += total if name == "engine" else 0
        best = {name: max(results, key=lambda r: r.rate) for name, results in rounds.items()}
        paced = asyncio.run(run_load("127.0.0.1", engine_port, "/webhooks/aircall",
                                     lambda n: bodies[offset + n], 5000, concurrency=32, rate=1000))  # fmt: skip
        metrics = requests.get(f"http://127.0.0.1:{engine_port}/metrics", timeout=5).text
    finally:
        stop(engine)
        stop(bare)
    group = [line for line in metrics.splitlines() if line.startswith("aircall_segment_outbox_commit_webhooks_")]
    count = float(
        next(line for line in group if line.startswith("aircall_segment_outbox_commit_webhooks_count")).split()[1]
    )
    total_webhooks = float(
        next(line for line in group if line.startswith("aircall_segment_outbox_commit_webhooks_sum")).split()[1]
    )
    print(f"# ingest, {machine()}; one uvicorn process each; client on the same machine, concurrency 32")
    print(f"{'server':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, label in (("bare", "bare Starlette (parse JSON, 200)"), ("engine", "engine (durable commit, mapping)")):
        s = best[name].summary()
        print(f"{label:<34}{s['rate']:>9,.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}")
    s = paced.summary()
    print(f"{'engine paced at 1,000 req/s':<34}{s['rate']:>9,.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}")
    print(f"ratio engine/bare throughput: {best['engine'].rate / best['bare'].rate:.2f}")
    print(f"group commit: {total_webhooks / count:.1f} webhooks per commit on average ({count:.0f} commits)")


# -- wrk: the gateway against its two baselines, and end to end --------------------------------------------


def wrk_template(tmp: Path) -> Path:
    """The call.ended sample with a placeholder for data.id, which bench/wrk_calls.lua fills per request."""
    envelope = json.loads(json.dumps(SAMPLE))
    envelope["data"]["id"] = 918273645546372819
    path = tmp / "call.template.json"
    path.write_text(json.dumps(envelope).replace("918273645546372819", "__CALL_ID__"))
    return path


def run_wrk(port: int, template: Path, first_id: int, seconds: int, connections: int = 32) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(ROOT / "bench/wrk_calls.lua"),
         f"http://127.0.0.1:{port}", "--", str(template), str(first_id)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"(\d+) requests in ([\d.]+)s", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50, p99 = (re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out) for p in ("50.000", "99.000"))
    if p50 is None:
        p50, p99 = (re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out) for p in ("50", "99"))
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests": float(found.group(1)),
        "rate": float(found.group(1)) / float(found.group(2)),
        "errors": float(errors.group(1)) if errors else 0.0,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)],
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
    }


def durable_server(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "uvicorn", "durable_app:app", "--port", str(port), "--log-level", "warning",
            "--app-dir", str(ROOT / "bench")]  # fmt: skip
    return start(args, base_env() | {"DURABLE_DB": str(tmp / "durable.sqlite3")}, port, "/docs", tmp / "durable.log")


def bare_server(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning",
            "--app-dir", str(ROOT / "bench")]  # fmt: skip
    return start(args, base_env(), port, "/webhooks/aircall", tmp / "bare.log")


def ingest_wrk(seconds: int, rounds: int, pause_processing: bool = False) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-wrk-"))
    template = wrk_template(tmp)
    ports = {name: free_port() for name in ("bare", "durable", "engine")}
    procs = [
        bare_server(tmp, ports["bare"]),
        durable_server(tmp, ports["durable"]),
        engine_server(tmp, ports["engine"]),
    ]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
    # --pause-processing: the processing process stopped (SIGSTOP) while the load runs, to measure the gateway
    # alone, without the mapping's writes sharing SQLite's single writer; it maps the backlog afterwards.
    priority = processing_priority(procs[2].pid)
    paused = children(procs[2].pid) if pause_processing else []
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        first_id = 1
        for _ in range(rounds):  # interleaved: every server sees the same machine state
            for name, port in ports.items():
                result = run_wrk(port, template, first_id, seconds)
                assert result["errors"] == 0, (name, result)
                results[name].append(result)
                first_id += 10_000_000
        # The p99 aim is in milliseconds, and a commit's fsync is most of it: the durable app paced the same way
        # shows what this machine's disk allows.
        paced, paced_durable = (
            asyncio.run(run_load("127.0.0.1", ports[name], "/webhooks/aircall", lambda n: call_body(10**8 + n),
                                 5000, concurrency=32, rate=1000))
            for name in ("engine", "durable")
        )  # fmt: skip
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        for proc in procs:
            stop(proc)
    alone = ", processing paused during the load" if pause_processing else ""
    print(f"# ingest with wrk -t1 -c32 -d{seconds}s, {rounds} interleaved rounds{alone}, {machine()}; {priority}")
    print(f"{'server':<40}{'req/s (each round)':>28}{'p50 ms':>9}{'p99 ms':>9}")
    for name, label in (("bare", "bare Starlette (parse JSON, 200)"), ("durable", "smallest durable app"),
                        ("engine", "engine serve (gateway)")):  # fmt: skip
        rates = " / ".join(f"{r['rate']:,.0f}" for r in results[name])
        best = max(results[name], key=lambda r: r["rate"])
        print(f"{label:<40}{rates:>28}{best['p50_ms']:>9.2f}{best['p99_ms']:>9.2f}")
    for label, load in (("engine", paced), ("durable app", paced_durable)):
        s = load.summary()
        print(f"{label + ' paced at 1,000 req/s':<40}{s['rate']:>28,.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}")
    print(f"p99 at 1,000 req/s, engine/durable: {paced.summary()['p99_ms'] / paced_durable.summary()['p99_ms']:.2f}")
    for other in ("bare", "durable"):
        ratios = [e["rate"] / o["rate"] for e, o in zip(results["engine"], results[other], strict=True)]
        print(f"ratio engine/{other}, each round: " + ", ".join(f"{r:.2f}" for r in ratios))


def metric(port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def end_to_end(seconds: int, workers: int) -> None:
    """wrk posts for `seconds`; the rate is what was acknowledged, over the time from the load's start until the
    last of it reached the fake Segment, each once. Then the bare app under the same load, for the ratio."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    template = wrk_template(tmp)
    segment = FakeSegment(tmp)
    try:
        port = free_port()
        env = base_env() | {"AIRCALL_WEBHOOK_TOKEN": TOKEN, "ENGINE_DB": str(tmp / "outbox.sqlite3"),
                            "ENGINE_LOG_LEVEL": "warning", "SEGMENT_API_URL": segment.url,
                            "SEGMENT_WRITE_KEY": WRITE_KEY}  # fmt: skip
        engine = start([str(Path(sys.executable).parent / "engine"), "serve", "--port", str(port), "--workers",
                        str(workers)], env, port, "/healthz", tmp / "engine.log")  # fmt: skip
        set_processing_priority(engine.pid)
        priority = processing_priority(engine.pid)
        try:
            began = time.perf_counter()
            load = run_wrk(port, template, 1, seconds)
            load_seconds = time.perf_counter() - began
            time.sleep(0.5)  # requests still in flight when wrk stopped are answered (and counted) meanwhile
            accepted = metric(port, 'aircall_segment_webhooks_total{event="call.ended",outcome="accepted"}')
            wait_for(lambda: fake_count(segment) >= accepted, 600, 0.05, what="every acknowledged webhook delivered")
            total_seconds = time.perf_counter() - began
            time.sleep(2)  # anything delivered twice would arrive now
            received = segment.received()
            delivered, duplicates = len(received["messages"]), received["duplicates"]
        finally:
            stop(engine)
        bare_port = free_port()
        bare = bare_server(tmp, bare_port)
        try:
            baseline = run_wrk(bare_port, template, 10**9, seconds)
        finally:
            stop(bare)
    finally:
        segment.stop()
    rate = accepted / total_seconds
    print(
        f"# end to end, wrk -t1 -c32 -d{seconds}s, engine serve --workers {workers} with the fake Segment, {machine()}"
        f"; {priority}"
    )
    print(f"acknowledged {accepted:,.0f} webhooks in {load_seconds:.1f} s ({load['rate']:,.0f} req/s, p99 "
          f"{load['p99_ms']:.1f} ms); all delivered {total_seconds:.1f} s after the load began")  # fmt: skip
    print(f"messages at the fake Segment: {delivered:,.0f}, of which sent twice: {duplicates:,.0f}")
    print(f"sustained end to end: {rate:,.0f} webhooks/s; bare Starlette under the same load: {baseline['rate']:,.0f}")
    print(f"ratio end-to-end/bare: {rate / baseline['rate']:.2f}")


def catch_up(seconds: int) -> None:
    """The processing process catching up a backlog that wrk left (processing stopped during the load): the
    p99 of the answer at 1,000 req/s meanwhile, then again once caught up; then how fast it maps a second
    backlog with no load at all. The smallest durable app paced the same way gives the disk's own p99."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-catch-up-"))
    template = wrk_template(tmp)
    port, durable_port = free_port(), free_port()
    engine, durable = engine_server(tmp, port), durable_server(tmp, durable_port)
    priority = processing_priority(engine.pid)

    def backlog(first_id: int) -> float:
        paused = children(engine.pid)
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        try:
            return run_wrk(port, template, first_id, seconds)["requests"]
        finally:
            for pid in paused:
                os.kill(pid, signal.SIGCONT)

    def paced_p99(target: int, offset: int) -> float:
        load = run_load("127.0.0.1", target, "/webhooks/aircall", lambda n: call_body(offset + n), 3000, rate=1000)
        return asyncio.run(load).summary()["p99_ms"]

    try:
        stored = backlog(1)
        during = paced_p99(port, 10**8)
        left = metric(port, "aircall_segment_outbox_unprocessed_webhooks")
        wait_for(
            lambda: metric(port, "aircall_segment_outbox_unprocessed_webhooks") == 0,
            600,
            0.05,
            what="the backlog mapped",
        )
        after = paced_p99(port, 2 * 10**8)
        disk = paced_p99(durable_port, 3 * 10**8)
        second = backlog(10**7)
        began = time.perf_counter()
        wait_for(
            lambda: metric(port, "aircall_segment_outbox_unprocessed_webhooks") == 0,
            600,
            0.02,
            what="the backlog mapped",
        )
        mapping_rate = second / (time.perf_counter() - began)
    finally:
        stop(engine)
        stop(durable)
    print(
        f"# catching up a backlog of wrk -t1 -c32 -d{seconds}s (processing stopped meanwhile), {machine()}; {priority}"
    )
    print(f"backlog {stored:,.0f} webhooks; p99 at 1,000 req/s while it is mapped {during:.1f} ms "
          f"({left:,.0f} still to map after), once mapped {after:.1f} ms; durable app {disk:.1f} ms")  # fmt: skip
    print(f"a backlog of {second:,.0f} mapped with no load at {mapping_rate:,.0f} webhooks/s")


def burst_lag(seconds: int) -> None:
    """A burst with mapping running, as Aircall would send one: the engine's rate against the smallest durable
    app's just before it, then how many webhooks the burst left to map and how long after its end they were mapped
    (counted in the outbox itself, a read-only connection polled every 20 ms)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-lag-"))
    template = wrk_template(tmp)
    port, durable_port = free_port(), free_port()
    engine, durable = engine_server(tmp, port), durable_server(tmp, durable_port)
    priority = processing_priority(engine.pid)

    def unprocessed() -> int:
        conn = sqlite3.connect(f"file:{tmp / 'outbox.sqlite3'}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT COUNT(*) FROM webhook_state WHERE processed_at IS NULL").fetchone()[0]
        finally:
            conn.close()

    try:
        baseline = run_wrk(durable_port, template, 1, seconds)
        load = run_wrk(port, template, 1, seconds)
        ended = time.perf_counter()
        left = unprocessed()
        wait_for(lambda: unprocessed() == 0, 600, 0.02, what="the burst mapped")
        lag = time.perf_counter() - ended
    finally:
        stop(engine)
        stop(durable)
    print(f"# a burst of wrk -t1 -c32 -d{seconds}s with mapping running, {machine()}; {priority}")
    print(
        f"engine {load['rate']:,.0f} req/s (p99 {load['p99_ms']:.1f} ms), durable app just before "
        f"{baseline['rate']:,.0f} (p99 {baseline['p99_ms']:.1f} ms): ratio {load['rate'] / baseline['rate']:.2f}"
    )
    print(
        f"mapped during the burst {load['requests'] - left:,.0f} of {load['requests']:,.0f} "
        f"({(load['requests'] - left) / seconds:,.0f}/s); left {left:,} to map, all mapped {lag:.1f} s after "
        f"the burst ended ({left / lag if lag else 0:,.0f}/s)"
    )


def priorities(seconds: int, rounds: int, values: list[str]) -> None:
    """One engine per processing priority in `values` (a niceness, or `idle`), all in one run: each round the bare
    app, the durable app, then each engine (in an order turned by one every round) take a wrk burst; after each
    engine's burst, the backlog it left and how long it takes to map. Then each paced at 1,000 req/s."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-priorities-"))
    template = wrk_template(tmp)
    ports = {"bare": free_port(), "durable": free_port()}
    procs = {"bare": bare_server(tmp, ports["bare"]), "durable": durable_server(tmp, ports["durable"])}
    shown = {}
    for value in values:
        folder = tmp / f"engine-{value}"
        folder.mkdir()
        ports[value] = free_port()
        procs[value] = engine_server(folder, ports[value])
        set_processing_priority(procs[value].pid, value)
        shown[value] = processing_priority(procs[value].pid)

    def unprocessed(value: str) -> int:
        conn = sqlite3.connect(f"file:{tmp / f'engine-{value}' / 'outbox.sqlite3'}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT COUNT(*) FROM webhook_state WHERE processed_at IS NULL").fetchone()[0]
        finally:
            conn.close()

    results: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
    loads = []
    try:
        first_id = 1
        for n in range(rounds):
            loads.append(Path("/proc/loadavg").read_text().split()[0])
            turn = values[n % len(values) :] + values[: n % len(values)]
            for name in ["bare", "durable", *turn]:
                result = run_wrk(ports[name], template, first_id, seconds)
                assert result["errors"] == 0, (name, result)
                first_id += 10_000_000
                if name in values:
                    ended = time.perf_counter()
                    result["left"] = unprocessed(name)
                    wait_for(lambda v=name: unprocessed(v) == 0, 600, 0.02, what="the burst mapped")
                    result["lag"] = time.perf_counter() - ended
                results[name].append(result)
        paced = {
            name: asyncio.run(run_load("127.0.0.1", ports[name], "/webhooks/aircall",
                                       lambda n, o=i: call_body(10**8 * (o + 1) + n), 5000, concurrency=32,
                                       rate=1000)).summary()
            for i, name in enumerate(["durable", *values])
        }  # fmt: skip
    finally:
        for proc in procs.values():
            stop(proc)
    print(f"# priorities of processing, wrk -t1 -c32 -d{seconds}s, {rounds} rounds (load at each round's start "
          f"{' / '.join(loads)}), {machine()}")  # fmt: skip
    for value in values:
        print(f"engine {value}: {shown[value]}")
    print(f"{'server':<24}{'req/s (each round)':>44}{'p99 ms (each round)':>36}")
    for name in ports:
        rates = " / ".join(f"{r['rate']:,.0f}" for r in results[name])
        p99s = " / ".join(f"{r['p99_ms']:.0f}" for r in results[name])
        print(f"{name:<24}{rates:>44}{p99s:>36}")
    for value in values:
        for other in ("durable", "bare"):
            ratios = [e["rate"] / o["rate"] for e, o in zip(results[value], results[other], strict=True)]
            mean = sum(ratios) / len(ratios)
            print(
                f"engine {value} / {other}, each round: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + f" (mean {mean:.3f})"
            )
        lags = ", ".join(f"{r['left']:,.0f} left, {r['lag']:.2f} s" for r in results[value])
        print(f"engine {value} after its burst: {lags}")
    for name, s in paced.items():
        print(f"{name} paced at 1,000 req/s: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms")


# -- drain ----------------------------------------------------------------------------------------------------


def queued_messages(count: int) -> list[tuple[str, bytes]]:
    mappings = load_mappings(ROOT / "mappings")
    out = []
    for n in range(count):
        webhook = webhook_from_json(json.loads(call_body(n)))
        out.extend(mappings.get(webhook.event).render_json(webhook))
    return out


def fake_count(segment: FakeSegment) -> int:
    return requests.get(f"{segment.url}/_count", timeout=10).json()["messages"]


def drain(count: int) -> None:
    from segment import analytics  # segment-analytics-python, for the comparison only

    tmp = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    messages = queued_messages(count)
    outbox = SqliteOutbox(tmp / "outbox.sqlite3")
    for start_at in range(0, len(messages), 5000):
        chunk = messages[start_at : start_at + 5000]
        webhook = stored_webhook(webhook_from_json(json.loads(call_body(start_at))))
        outbox.enqueue([(webhook, [NewMessage(i, "call.ended", body) for i, body in chunk])])
    outbox.close()
    segment = FakeSegment(tmp)
    try:
        port = free_port()
        began = time.perf_counter()
        engine = engine_server(tmp, port, SEGMENT_API_URL=segment.url, SEGMENT_WRITE_KEY=WRITE_KEY)
        wait_for(lambda: fake_count(segment) >= count, 600, 0.2, what="drain")
        engine_seconds = time.perf_counter() - began  # includes the server's start-up
        stop(engine)
        segment.control(reset=True)

        decoded = [json.loads(body) for _, body in messages]
        client = analytics.Client(
            WRITE_KEY, host=segment.url, max_queue_size=count + 1, upload_size=100, gzip=False
        )  # fmt: skip: its defaults, as a user has them
        began = time.perf_counter()
        for m in decoded:
            client.track(user_id=m.get("userId"), anonymous_id=m.get("anonymousId"), event=m["event"],
                         properties=m["properties"], timestamp=None, message_id=m["messageId"])  # fmt: skip
        client.flush()
        wait_for(lambda: fake_count(segment) >= count, 600, 0.2, what="analytics-python drain")
        library_seconds = time.perf_counter() - began
        client.shutdown()
    finally:
        segment.stop()
    print(f"# drain of {count:,} queued messages into the fake Segment, {machine()}")
    print(f"engine (from the durable outbox, start-up included): {engine_seconds:.1f} s, "
          f"{count / engine_seconds:,.0f} msg/s")  # fmt: skip
    print(f"segment-analytics-python (in memory, not durable):   {library_seconds:.1f} s, "
          f"{count / library_seconds:,.0f} msg/s")  # fmt: skip
    print(f"ratio engine/library throughput: {library_seconds / engine_seconds:.2f}")


# -- memory ---------------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(count: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    template = queued_messages(1)[0][1]
    empty_dir, full_dir = tmp / "empty", tmp / "full"
    empty_dir.mkdir()
    full_dir.mkdir()
    outbox = SqliteOutbox(full_dir / "outbox.sqlite3")
    webhook = stored_webhook(webhook_from_json(json.loads(call_body(0))))
    for start_at in range(0, count, 10_000):
        outbox.enqueue([(webhook, [NewMessage(f"bench-{n}", "call.ended", template)
                                   for n in range(start_at, min(start_at + 10_000, count))])])  # fmt: skip
    outbox.close()
    size_mb = (full_dir / "outbox.sqlite3").stat().st_size / 1e6
    segment = FakeSegment(tmp)
    segment.control(fail_for=3600.0, status=503)  # Segment down: the backlog stays while we measure
    figures = {}
    try:
        for name, folder in (("empty", empty_dir), ("full", full_dir)):
            port = free_port()
            proc = engine_server(folder, port, SEGMENT_API_URL=segment.url, SEGMENT_WRITE_KEY=WRITE_KEY)
            for n in range(200):
                requests.post(f"http://127.0.0.1:{port}/webhooks/aircall", data=call_body(10**7 + n),
                              headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip
            time.sleep(3)  # a few delivery cycles against the failing Segment; /healthz counts are then fresh
            health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60).json()
            figures[name] = (rss_kib(proc.pid), health["outbox"]["pending"])
            stop(proc)
    finally:
        segment.stop()
    print(f"# server memory, {machine()}; outbox file {size_mb:,.0f} MB with the backlog")
    for name, (rss, pending) in figures.items():
        print(f"{name:<6} outbox: {pending:>9,} pending, RSS {rss / 1024:,.1f} MiB")
    print(f"ratio full/empty RSS: {figures['full'][0] / figures['empty'][0]:.2f}")


def memory_webhooks(count: int) -> None:
    """RSS of the server and of its processing process with `count` stored webhooks waiting to be mapped, against
    an empty outbox: both read the backlog a batch at a time."""
    from engine.aircall.envelope import parse_webhook

    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-webhooks-"))
    empty_dir, full_dir = tmp / "empty", tmp / "full"
    empty_dir.mkdir()
    full_dir.mkdir()
    outbox = SqliteOutbox(full_dir / "outbox.sqlite3")
    for start_at in range(0, count, 10_000):
        batch = []
        for n in range(start_at, min(start_at + 10_000, count)):
            body = call_body(n)
            batch.append(stored_webhook(parse_webhook(body), body))
        outbox.append(batch)
    outbox.close()
    size_mb = (full_dir / "outbox.sqlite3").stat().st_size / 1e6
    figures = {}
    for name, folder in (("empty", empty_dir), ("full", full_dir)):
        port = free_port()
        proc = engine_server(folder, port)  # no write key: what is mapped stays in the outbox
        time.sleep(10)  # the processing process works through the backlog meanwhile
        child = next(iter(children(proc.pid)), None)
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60).json()
        figures[name] = (rss_kib(proc.pid), rss_kib(child) if child else 0, health["outbox"]["unprocessed"])
        stop(proc)
    print(f"# memory with {count:,} stored webhooks to map, {machine()}; outbox file {size_mb:,.0f} MB")
    for name, (server, child, waiting) in figures.items():
        print(f"{name:<6} outbox: {waiting:>9,} still to map after 10 s; RSS server {server / 1024:,.1f} MiB, "
              f"processing {child / 1024:,.1f} MiB")  # fmt: skip
    print(f"ratio full/empty RSS: server {figures['full'][0] / figures['empty'][0]:.2f}, "
          f"processing {figures['full'][1] / max(figures['empty'][1], 1):.2f}")  # fmt: skip


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "what", choices=["ingest", "wrk", "e2e", "drain", "memory", "memory-webhooks", "catch-up", "lag", "priorities"]
    )
    parser.add_argument("--count", type=int, help="requests per ingest round, messages to drain or to keep")
    parser.add_argument("--seconds", type=int, default=10, help="wrk's duration (wrk, e2e, catch-up, lag)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (wrk)")
    parser.add_argument("--workers", type=int, default=1, help="engine serve --workers (e2e)")
    parser.add_argument("--priorities", default="0,10", help="priorities: the processing niceness of each engine")
    parser.add_argument("--pause-processing", action="store_true", help="wrk: measure the gateway alone")
    args = parser.parse_args()
    if args.what == "wrk":
        ingest_wrk(args.seconds, args.rounds, args.pause_processing)
    elif args.what == "e2e":
        end_to_end(args.seconds, args.workers)
    elif args.what == "catch-up":
        catch_up(args.seconds)
    elif args.what == "lag":
        burst_lag(args.seconds)
    elif args.what == "priorities":
        priorities(args.seconds, args.rounds, args.priorities.split(","))
    elif args.what == "memory-webhooks":
        memory_webhooks(args.count or 1_000_000)
    elif args.what == "ingest":
        ingest(args.count or 5000)
    elif args.what == "drain":
        drain(args.count or 100_000)
    else:
        memory(args.count or 1_000_000)


if __name__ == "__main__":
    main()
