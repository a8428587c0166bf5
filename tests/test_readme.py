"""The README stays true: CI runs its test command, and its mapping example is a valid mapping."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from engine.aircall.watch import WebhookWatch
from engine.outbox import OutboxStats
from engine.segment.destination import Answer, Outcome
from engine.server.metrics import Metrics
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", README, re.S)


def test_ci_runs_the_readmes_test_command():
    test_command = next(block for block in shell_blocks() if "pytest" in block)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readmes_first_command_serves_the_console_where_the_sample_webhook_shows(engine_server):
    """The newcomer's minute: the first command's settings, the sample the next block sends, then the console
    with the token the command set, showing the webhook and what is left to set up."""
    import html

    import requests

    from tests.harness import sample, wait_for

    first = shell_blocks()[0]
    settings = dict(re.findall(r"\b([A-Z_]+)=(\S+)", first.split("engine validate mappings &&")[1]))
    assert settings.keys() == {"AIRCALL_WEBHOOK_TOKEN", "ENGINE_CONSOLE_TOKEN"} and "engine serve" in first
    console_token = settings["ENGINE_CONSOLE_TOKEN"]
    assert f"sign in with `{console_token}`" in README
    server = engine_server(with_segment=False, **settings)  # no write key yet, as on a first run
    assert "--data @tests/fixtures/call.ended.json" in shell_blocks()[1]
    assert server.post(sample("call.ended")).json() == {"status": "accepted"}
    assert "web console at /console/" in server.process.log and console_token not in server.process.log

    browser = requests.Session()
    form = browser.get(f"{server.url}/console/sign-in", timeout=5).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    signed = browser.post(f"{server.url}/console/sign-in", data={"csrf": csrf, "token": console_token}, timeout=5)
    assert signed.status_code == 200 and 'data-testid="console-status"' in signed.text
    listing = browser.get(f"{server.url}/console/webhooks", timeout=5).text
    assert listing.count('data-testid="webhook-row"') == 1 and "<code>call.ended</code>" in listing
    # The status reads the outbox's counts at most once a second: the page may wait a second more.
    status = wait_for(
        lambda: (
            "Waiting for the first webhook" not in (page := browser.get(f"{server.url}/console/", timeout=5).text)
            and html.unescape(page)
        ),
        what="the status page past its first webhook",
    )
    assert "Setting up: 1 of 5 done" in status and "Set SEGMENT_WRITE_KEY" in status


def named_blocks() -> list[tuple[str, str]]:
    """(path, text) of each code block that README introduces with a line naming a file: "`mappings/x.yaml`:"."""
    return re.findall(r"^`((?:[\w.-]+/)+[\w.-]+)`[^\n`]*:\n\n```\w*\n(.*?)```", README, re.S | re.M)


def test_readme_shows_the_files_it_names_as_they_are():
    blocks = named_blocks()
    assert {"mappings/call.ended.yaml", "mappings/user.created.yaml"} <= dict(blocks).keys()
    for path, text in blocks:
        assert (ROOT / path).is_file(), f"README shows {path}, which does not exist"
        assert text == (ROOT / path).read_text(), f"README's {path} is not the file"


def test_readme_mapping_example_validates_and_renders(engine, mappings_copy):
    example = re.search(r"could read:\n\n```yaml\n(.*?)```", README, re.S).group(1)
    (mappings_copy / "call.ended.yaml").write_text(example)
    run = engine("validate", str(mappings_copy))
    assert run.code == 0, run.out
    messages = engine("render", "tests/fixtures/call.ended.json", "--mappings", str(mappings_copy)).json()
    assert [m["type"] for m in messages] == ["track", "identify"]
    assert messages[0]["properties"]["minutes"] == 3.3
    assert messages[0]["properties"]["call_id"] == 2187654321  # inherited from _call.yaml


def test_readmes_table_of_events_is_what_engine_events_prints(engine):
    begin, end = "<!-- engine events: begin", "<!-- engine events: end -->"
    table = README[README.index("\n", README.index(begin)) + 1 : README.index(end)]
    run = engine("events")
    assert run.code == 0, run.err
    assert table == run.out, "README's table of events is stale: run `engine events` and paste its output"
    for row in ("| `user.created.v2` | track `user.created`; identify |", "| `transcription.created` |"):
        assert row in table


def readme_table(name: str) -> list[list[str]]:
    """The cells of README's table between `<!-- NAME: begin -->` and `<!-- NAME: end -->`, header row left out."""
    table = README[README.index(f"<!-- {name}: begin -->") : README.index(f"<!-- {name}: end -->")]
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row] for row in rows]


def exposed_metrics() -> dict[str, str]:
    """Each metric /metrics declares, with its labels (`name{a,b}`, in alphabetical order), and its type: as the
    server's Metrics render them, with a series of each labelled metric."""
    metrics = Metrics()
    metrics.outbox(OutboxStats(0, 0, 0, 0, None, None, unmapped={"call.x": 1}, unmapped_total=1))
    metrics.webhook("call.ended", "accepted", 0.01)
    metrics.processed(1, 0, 1)
    metrics.delivery("request", 1, Answer(Outcome.DELIVERED, 200, "ok"))
    metrics.aircall_webhook(WebhookWatch("active", 1.0, "on"))
    exposed = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.endswith("_created"):  # prometheus-client's own series: when each counter began
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = sorted({label for sample in family.samples for label in sample.labels if label != "le"})
        exposed[name + ("{" + ",".join(labels) + "}" if labels else "")] = family.type
    return exposed


def _sorted_labels(metric: str) -> str:
    name, _, labels = metric.rstrip("}").partition("{")
    return name + ("{" + ",".join(sorted(labels.split(","))) + "}" if labels else "")


def test_readme_lists_every_metric_with_its_type_and_labels():
    listed = {_sorted_labels(row[0].strip("`")): row[1] for row in readme_table("metrics")}
    assert listed == exposed_metrics()
    assert all(name.startswith(("aircall_segment_", "process_", "python_")) for name in listed)


def test_readmes_renamed_metrics_lead_to_metrics_that_exist_and_no_old_name_is_left():
    renamed = {row[0].strip("`"): row[1].strip("`") for row in readme_table("renamed metrics")}
    exposed = {name.split("{")[0]: kind for name, kind in exposed_metrics().items()}
    assert set(renamed.values()) <= exposed.keys()
    assert not set(renamed) & exposed.keys()
    ours = {name for name in exposed if name.startswith("aircall_segment_")}
    new = {"aircall_segment_build_info", "aircall_segment_processes", "aircall_segment_aircall_webhook_state",
           "aircall_segment_aircall_webhook_checked_timestamp_seconds"}  # fmt: skip
    assert set(renamed.values()) == ours - new, "a metric of ours is missing from the renamed table"
