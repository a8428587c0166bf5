"""`engine validate` through the console script: one test per kind of mistake, each naming file, line and reason."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, MAPPINGS, ROOT


def write(mappings: Path, name: str, text: str) -> None:
    (mappings / name).write_text(text, encoding="utf-8")


# Lines 1 to 4 of a call.ended.yaml; what a test adds starts at line 5.
CALL_ENDED_HEAD = "aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  event: call.ended\n"


def validate_call_ended(engine, mappings: Path, more: str):
    write(mappings, "call.ended.yaml", CALL_ENDED_HEAD + more)
    return engine("validate", str(mappings))


EVENT_FILES = len([p for p in MAPPINGS.glob("*.yaml") if not p.name.startswith("_")])
SAMPLES = len(list(FIXTURES.glob("*.json")))


def findings(run) -> list[str]:
    """The FILE:LINE:COL: lines of the output, with the folder taken off the path."""
    return [re.sub(r"^.*?mappings/", "", line) for line in run.out.splitlines() if re.match(r"^\S.*:\d+:\d+: ", line)]


def test_shipped_mappings_are_clean_with_one_summary_line(engine):
    run = engine("validate", "mappings")
    assert run.code == 0, run.out + run.err
    assert run.out.count("\n") == 1
    assert f"{EVENT_FILES} mappings valid" in run.out


def test_mappings_with_no_sample_webhooks_beside_them_say_they_were_tried_on_sparse_payloads_only(engine, tmp_path):
    shutil.copytree(MAPPINGS, tmp_path / "elsewhere")  # a deployment's own repository: no tests/fixtures
    run = engine("validate", str(tmp_path / "elsewhere"))
    assert run.code == 0
    assert "rendered from sparse payloads only (no sample webhook of these events found" in run.out
    run = engine("validate", str(tmp_path / "elsewhere"), "--fixtures", str(FIXTURES))
    assert f"from {SAMPLES} sample webhooks and sparse payloads" in run.out


def test_a_sample_that_cannot_be_read_is_a_finding_not_a_traceback(engine, tmp_path):
    (tmp_path / "samples" / "folder.json").mkdir(parents=True)
    run = engine("validate", str(MAPPINGS), "--fixtures", str(tmp_path / "samples"))
    assert run.code == 1 and "Traceback" not in run.err
    assert run.out.startswith(f"{tmp_path / 'samples' / 'folder.json'}:1:1: cannot read this sample: Is a directory")


def test_validate_defaults_to_engine_mappings_setting(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", "aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  event: [1]\n")
    run = engine("validate", env={"ENGINE_MAPPINGS": str(mappings_copy)})
    assert run.code == 1
    assert findings(run) == ["call.ended.yaml:4:10: segment.event: [1] is not of type 'string'"]


def test_yaml_syntax_error_names_the_line(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", "aircall_event: call.ended\nsegment:\n  type: track\n  event: [oops\n")
    run = engine("validate", str(mappings_copy))
    assert run.code == 1
    [finding] = findings(run)
    assert finding.startswith("call.ended.yaml:5:1: YAML syntax error:")


def test_duplicate_yaml_key_is_an_error_not_a_silent_override(engine, mappings_copy):
    text = "aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  event: call.ended\n  event: call_ended\n"
    write(mappings_copy, "call.ended.yaml", text)
    run = engine("validate", str(mappings_copy))
    assert findings(run) == ["call.ended.yaml:5:3: YAML syntax error: duplicate key 'event' (first at line 4)"]


def test_unknown_key_points_at_the_key_and_lists_the_allowed_ones(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", "aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  evnt: x\n")
    run = engine("validate", str(mappings_copy))
    assert run.code == 1
    assert findings(run) == [
        "call.ended.yaml:4:3: unknown key 'evnt'; allowed here: anonymousId, each, event, groupId, properties, traits, "
        "type, userId"
    ]
    assert "      evnt: x\n      ^" in run.out  # the line as written, a caret under the key


def test_wrong_segment_type_is_a_schema_error_on_its_line(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", "aircall_event: call.ended\nsegment:\n  type: trak\n  event: e\n")
    run = engine("validate", str(mappings_copy))
    [finding] = findings(run)
    assert finding.startswith("call.ended.yaml:3:9: segment.type: 'trak' is not one of ['track', 'identify', 'group']")


def test_track_without_event_name_after_merging_bases(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", "aircall_event: call.ended\nextends: _call.yaml\n")
    run = engine("validate", str(mappings_copy))
    [finding] = findings(run)
    assert "segment: 'event' is a required property" in finding
    assert finding.startswith("_call.yaml:")  # the merged segment was written in the base


def test_jinja_syntax_error_points_at_the_template_with_a_caret(engine, mappings_copy):
    run = validate_call_ended(engine, mappings_copy, '  properties:\n    duration: "{{ data.duration }"\n')
    assert findings(run) == ["call.ended.yaml:6:15: template syntax error: unexpected '}'"]
    assert '        duration: "{{ data.duration }"\n                  ^' in run.out


def test_error_on_second_line_of_a_block_template_names_that_file_line(engine, mappings_copy):
    run = validate_call_ended(
        engine, mappings_copy, "  properties:\n    summary: |\n      {{ data.id }}\n      {{ data.id + }}\n"
    )
    [finding] = findings(run)
    assert finding.startswith("call.ended.yaml:8:7: template syntax error:")


def test_unknown_variable_is_refused_before_anything_runs(engine, mappings_copy):
    run = validate_call_ended(engine, mappings_copy, "  userId: '{{ dat.user.id }}'\n")
    assert findings(run) == [
        "call.ended.yaml:5:11: unknown name 'dat' in template; templates can read data, event, fetched, resource, "
        "timestamp"
    ]


@pytest.mark.parametrize(
    "template",
    ["{{ ''.__class__.__mro__ }}", "{{ data.__class__ }}", "{{ data['__init__'] }}", "{{ data.id.__class__ }}"],
)
def test_sandbox_escape_attempt_is_refused(engine, mappings_copy, template):
    run = validate_call_ended(engine, mappings_copy, f'  properties:\n    x: "{template}"\n')
    assert run.code == 1
    [finding] = findings(run)
    assert finding.startswith("call.ended.yaml:6:8: access to '__")
    assert "is not allowed: templates run in a sandbox" in finding


def test_sandbox_refuses_unsafe_calls_at_render(engine, mappings_copy):
    # No underscore, so it passes the static check; the sandbox itself must stop it when it runs.
    run = validate_call_ended(engine, mappings_copy, '  properties:\n    x: "{{ data.tags.append(1) }}"\n')
    assert run.code == 1
    assert any(f.startswith("call.ended.yaml:6:8: fails on") and "SecurityError" in f for f in findings(run))


def test_statements_are_refused_with_the_inline_alternative(engine, mappings_copy):
    run = validate_call_ended(engine, mappings_copy, '  properties:\n    x: "{% if data.id %}yes{% endif %}"\n')
    [finding] = findings(run)
    assert finding.startswith("call.ended.yaml:6:8: statements ({% ... %}) are not supported")


@pytest.mark.parametrize(
    "value",
    ["1.0e+400", '"{{ 2e999 }}"', '"{{ 1e308 * 10 }}"', "\"{{ 'nan' | float }}\"", '"{{ -(10 ** 400) }}"',
     "1" + "0" * 400, '"{{ 1' + "0" * 5000 + ' }}"', "1" + "0" * 5000, '"{{ 10 ** 5000 }}"'],
    ids=["yaml", "jinja", "folded", "filter", "int", "yaml-int", "jinja-digits", "yaml-digits", "folded-digits"],
)  # fmt: skip
def test_a_number_no_double_holds_is_refused_where_it_is_written(engine, mappings_copy, value):
    """Written, or folded by Jinja when it compiles: before, each sample failed on a NameError of Jinja's own code,
    a 400-digit integer was sent as is, and past 4,300 digits Python's int limit was a traceback."""
    run = validate_call_ended(engine, mappings_copy, f"  properties:\n    big: {value}\n")
    assert run.code == 1 and "Traceback" not in run.err
    [finding] = findings(run)
    location, reason = finding.split(": ", 1)
    assert location == "call.ended.yaml:6:10"
    assert "a number beyond a double's range" in reason and "Segment takes finite numbers only" in reason


# A mapping of its own (no bases, no samples beside it): these tests are about one template, and validating a
# folder of one file takes a fraction of the shipped folder's time.
def lone_mapping(folder: Path, template: str) -> Path:
    """number.created.yaml with `template` as the value on line 7, column 12."""
    folder.mkdir(exist_ok=True)
    escaped = template.replace("\\", "\\\\").replace('"', '\\"')
    write(
        folder,
        "number.created.yaml",
        "aircall_event: number.created\nsegment:\n  type: track\n  event: number.created\n"
        f'  anonymousId: "x"\n  properties:\n    weird: "{escaped}"\n',
    )
    return folder


TOO_DEEP = {
    "lookups": "{{ data" + ".a" * 100 + " }}",  # compiled to Python, 99 levels were "too many nested parentheses"
    "parentheses": "{{ " + "(" * 70 + "1" + ")" * 70 + " }}",  # a RecursionError in Jinja's parser
    "filters": "{{ data.id" + " | string" * 200 + " }}",  # a SyntaxError from Python's compiler
    "operators": "{{ " + " + ".join("1" * 3000) + " }}",  # a RecursionError in Jinja's optimizer
}


@pytest.mark.parametrize("template", TOO_DEEP.values(), ids=TOO_DEEP.keys())
def test_a_template_nested_too_deeply_is_a_finding_on_its_line_in_validate_render_and_serve(engine, tmp_path, template):
    folder = lone_mapping(tmp_path / "mappings", template)
    run = engine("validate", str(folder))
    assert run.code == 1 and "Traceback" not in run.err, run.err
    [finding] = findings(run)
    assert finding.startswith("number.created.yaml:7:12: template nests "), finding
    assert "48 at most" in finding
    rendered = engine("render", str(FIXTURES / "number.created.json"), "--mappings", str(folder))
    assert rendered.code == 1 and "Traceback" not in rendered.err
    assert "number.created.yaml:7:12: template nests " in rendered.err + rendered.out
    served = engine("serve", "--port", "0", env={"ENGINE_MAPPINGS": str(folder), "ENGINE_DB": str(tmp_path / "o.db")})
    assert served.code == 2 and "Traceback" not in served.err
    assert "number.created.yaml:7:12: template nests " in served.err + served.out


def test_a_template_as_deep_as_allowed_compiles_and_renders_as_jinja_does(engine, tmp_path):
    deepest = "{{ data" + ".a" * 45 + " is none }}"  # 48 levels: the output, the test, 45 lookups, the name
    folder = lone_mapping(tmp_path / "mappings", deepest)
    assert engine("validate", str(folder)).code == 0
    run = engine("render", str(FIXTURES / "number.created.json"), "--mappings", str(folder))
    assert run.code == 0, run.err
    assert json.loads(run.out)[0]["properties"]["weird"] is True


def test_a_filter_that_fails_only_when_its_list_is_read_is_a_finding_on_its_line(engine, tmp_path):
    """map() is lazy: its filter ran while the message was encoded, and its TypeError passed RenderError by."""
    folder = lone_mapping(tmp_path / "mappings", "{{ [1, 2] | map('round', 'x') }}")
    run = engine("validate", str(folder))
    assert run.code == 1 and "Traceback" not in run.err, run.err
    assert findings(run) and all(
        line.startswith("number.created.yaml:7:12: fails on a webhook whose data is") and "TypeError" in line
        for line in findings(run)
    )
    rendered = engine("render", str(FIXTURES / "number.created.json"), "--mappings", str(folder))
    assert rendered.code == 1 and "Traceback" not in rendered.err
    assert "TypeError: 'str' object cannot be interpreted as an integer" in rendered.err


def test_an_integer_a_double_holds_loads_however_it_is_written(engine, mappings_copy):
    """Underscores and leading zeros do not count towards the size of a YAML integer."""
    written = "_".join("9" * 201) + "\n    padded: 0" + "0" * 320 + "7"
    assert validate_call_ended(engine, mappings_copy, f"  properties:\n    big: {written}\n").code == 0


def test_a_key_read_as_a_number_or_a_boolean_is_refused_on_its_line_not_a_traceback(engine, mappings_copy):
    run = validate_call_ended(engine, mappings_copy, "  properties:\n    1: one\n")
    assert run.code == 1 and "Traceback" not in run.err
    assert findings(run) == ["call.ended.yaml:6:5: a key must be text: '1' is read as something else; put it in quotes"]


def test_template_failing_on_a_sparse_payload_names_the_line(engine, mappings_copy):
    run = validate_call_ended(engine, mappings_copy, '  properties:\n    minutes: "{{ data.duration / 60 }}"\n')
    assert run.code == 1
    lines = findings(run)
    assert lines and all(line.startswith("call.ended.yaml:6:14: fails on a webhook whose data is") for line in lines)
    assert "TypeError" in lines[0]


def test_template_failing_on_a_sample_webhook_names_the_sample(engine, mappings_copy):
    text = (
        "aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  event: call.ended\n"
        '  properties:\n    per_minute: "{{ 60 / data.duration if data.duration is not none else none }}"\n'
    )
    write(mappings_copy, "call.ended.yaml", text)
    sample = json.loads((mappings_copy.parent / "tests/fixtures/call.ended.json").read_text())
    sample["data"]["duration"] = 0
    (mappings_copy.parent / "tests/fixtures/call.ended--zero.json").write_text(json.dumps(sample))
    run = engine("validate", str(mappings_copy))
    assert findings(run) == [
        "call.ended.yaml:6:17: fails on sample call.ended--zero.json: ZeroDivisionError: division by zero"
    ]


def test_missing_base_and_extends_cycle(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", "aircall_event: call.ended\nextends: _nope.yaml\nsegment:\n  event: e\n")
    write(mappings_copy, "_a.yaml", "extends: _b.yaml\n")
    write(mappings_copy, "_b.yaml", "extends: _a.yaml\n")
    write(mappings_copy, "call.hungup.yaml", "aircall_event: call.hungup\nextends: _a.yaml\nsegment:\n  event: e\n")
    run = engine("validate", str(mappings_copy))
    assert findings(run) == [
        "call.ended.yaml:2:10: base '_nope.yaml' not found",
        "_b.yaml:1:10: extends cycle: call.hungup.yaml -> _a.yaml -> _b.yaml -> _a.yaml",
    ]


def test_two_files_claiming_one_event(engine, mappings_copy):
    write(mappings_copy, "call.ended.copy.yaml", (mappings_copy / "call.ended.yaml").read_text())
    run = engine("validate", str(mappings_copy))
    assert findings(run) == ["call.ended.yaml:1:16: event 'call.ended' is already mapped by call.ended.copy.yaml"]


def test_missing_mapping_for_an_event_aircall_events_lists(engine, mappings_copy):
    (mappings_copy / "number.deleted.yaml").unlink()
    listed = engine("validate", str(mappings_copy), env={"AIRCALL_EVENTS": "call.ended,number.deleted"})
    assert findings(listed) == [
        "number.deleted.yaml:1:1: no mapping for enabled event 'number.deleted' (AIRCALL_EVENTS): its webhooks "
        "would be held unmapped; add the file, or leave the event out of AIRCALL_EVENTS"
    ]
    assert listed.code == 1
    subset = engine("validate", str(mappings_copy), env={"AIRCALL_EVENTS": "call.ended,user.created"})
    assert subset.code == 0, subset.out
    # With `all` (the default) an event Aircall has and nothing maps is held, not an error: a note says so.
    every = engine("validate", str(mappings_copy))
    assert every.code == 0, every.out
    assert (
        f"{mappings_copy}: note: 1 of Aircall's events have no mapping here (number.deleted); with "
        "AIRCALL_EVENTS=all their webhooks are stored and held, unmapped, until a mapping for them is added"
    ) in every.out.splitlines()


def test_unmapped_event_in_aircall_events_is_reported(engine):
    run = engine("validate", "mappings", env={"AIRCALL_EVENTS": "call.ended, call.endded"})
    assert run.code == 1
    assert findings(run)[0].startswith("call.endded.yaml:1:1: no mapping for enabled event 'call.endded'")


def test_message_invalid_for_segment_and_over_32kb(engine, mappings_copy):
    text = (
        "aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  event: call.ended\n"
        "  properties:\n    padding: \"{{ 'x' * 40000 }}\"\n"
    )
    write(mappings_copy, "call.ended.yaml", text)
    write(
        mappings_copy, "call.hungup.yaml", "aircall_event: call.hungup\nextends: _call.yaml\nsegment:\n  event: ' '\n"
    )
    run = engine("validate", str(mappings_copy))
    lines = findings(run)
    assert any(
        re.match(
            r"call\.ended\.yaml:1:1: fails on sample call\.ended\.json: call\.ended\.yaml: message is "
            r"\d+ bytes; Segment's limit is 32768",
            line,
        )
        for line in lines
    )
    assert any(
        line.startswith("call.hungup.yaml:1:1: fails on sample call.hungup.json: call.hungup.yaml: event name")
        for line in lines
    )


def test_all_problems_are_reported_in_one_run(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", "aircall_event: call.ended\nsegment:\n  type: trak\n  event: e\n")
    write(mappings_copy, "user.created.yaml", "aircall_event: user.created\nextends: _user.yaml\nsegment:\n  evnt: x\n")
    write(mappings_copy, "number.opened.yaml", "aircall_event: number.opened\nsegment: [\n")
    run = engine("validate", str(mappings_copy))
    files = sorted({line.split(":")[0] for line in findings(run)})
    assert files == ["call.ended.yaml", "number.opened.yaml", "user.created.yaml"]
    assert "3 problem(s)" in run.err


def test_json_output_for_machines(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", "aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  evnt: x\n")
    run = engine("validate", str(mappings_copy), "--json")
    assert run.code == 1
    report = run.json()
    assert report["ok"] is False
    assert [(Path(f["file"]).name, f["line"], f["column"]) for f in report["findings"]] == [("call.ended.yaml", 4, 3)]
    clean = engine("validate", "mappings", "--json", cwd=ROOT).json()
    assert clean["ok"] is True and clean["mappings"] == EVENT_FILES and clean["samples"] == SAMPLES


def test_missing_folder_and_bad_setting_are_usage_errors(engine, tmp_path):
    run = engine("validate", str(tmp_path / "nope"))
    assert (run.code, run.out, run.err) == (2, "", f"engine: {tmp_path / 'nope'}: mappings folder not found\n")
    (tmp_path / "file.yaml").write_text("aircall_event: call.ended\n")
    run = engine("validate", str(tmp_path / "file.yaml"))
    assert (run.code, run.out, run.err) == (2, "", f"engine: {tmp_path / 'file.yaml'}: not a folder\n")
    render = engine("render", "tests/fixtures/call.ended.json", "--mappings", str(tmp_path / "nope"))
    assert (render.code, render.err) == (2, f"engine: {tmp_path / 'nope'}: mappings folder not found\n")
    bad = engine("validate", "mappings", env={"AIRCALL_EVENTS": "call ended"})
    assert bad.code == 2
    assert bad.err.strip() == "engine: AIRCALL_EVENTS: 'call ended' is not an Aircall event name (like call.ended)"
    assert "Traceback" not in bad.err


def test_unknown_filter_or_test_is_a_finding_on_its_line_not_a_traceback(engine, mappings_copy):
    text = (
        'aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  event: "{{ event | upperr }}"\n'
        '  properties:\n    known: "{{ data.id is nosuchtest }}"\n'
        '    guarded: "{{ data.id | lowerr if data.id else none }}"\n'
    )
    write(mappings_copy, "call.ended.yaml", text)
    run = engine("validate", str(mappings_copy))
    assert run.code == 1 and "Traceback" not in run.err, run.err
    assert findings(run) == [
        "call.ended.yaml:4:10: unknown filter 'upperr'; did you mean 'upper'?",
        "call.ended.yaml:6:12: unknown test 'nosuchtest'",
        # Inside a condition Jinja defers the check to the render: it is refused here all the same.
        "call.ended.yaml:7:14: unknown filter 'lowerr'; did you mean 'lower'?",
    ]
    render = engine("render", "tests/fixtures/call.ended.json", "--mappings", str(mappings_copy))
    assert render.code == 1 and "Traceback" not in render.err
    assert "call.ended.yaml:4:10: unknown filter 'upperr'" in render.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder whatever its mode")
def test_unreadable_folder_is_a_usage_error(engine, mappings_copy):
    mappings_copy.chmod(0)
    try:
        run = engine("validate", str(mappings_copy))
    finally:
        mappings_copy.chmod(0o755)
    assert (run.code, run.out) == (2, "")
    assert run.err == f"engine: {mappings_copy}: cannot read the mappings folder: Permission denied\n"


def test_summary_and_json_give_each_mappings_time_per_event(engine):
    run = engine("validate", "mappings")
    assert re.search(r"; \d+ µs per event on average, slowest \S+\.yaml at \d+ µs$", run.out.strip())
    timings = engine("validate", "mappings", "--json", cwd=ROOT).json()["timings"]
    assert len(timings) == EVENT_FILES
    assert all(t["runtime"] == "python" and 0 < t["us_per_event"] / t["messages_per_event"] < 500 for t in timings)
    [transcript] = [t for t in timings if t["event"] == "transcription.created"]
    assert transcript["messages_per_event"] > 100  # the hour-long sample: one message per utterance


def test_template_the_compiler_does_not_translate_runs_on_jinja_and_validate_says_where(engine, mappings_copy):
    template = "{{ (data.direction or 'none').upper() }}"
    run = validate_call_ended(engine, mappings_copy, f'  properties:\n    shout: "{template}"\n')
    assert run.code == 0, run.out
    assert findings(run) == [
        "call.ended.yaml:6:12: note: runs on Jinja's runtime, not compiled to Python (calls other than "
        "stable_id(...)); it renders the same, more slowly"
    ]
    report = engine("validate", str(mappings_copy), "--json").json()
    assert report["ok"] is True and [(Path(n["file"]).name, n["line"]) for n in report["notes"]] == [
        ("call.ended.yaml", 6)
    ]
    [timing] = [t for t in report["timings"] if t["event"] == "call.ended"]
    assert timing["runtime"] == "python+jinja"


def test_slow_mapping_is_pointed_out(engine, mappings_copy):
    template = "{{ (range(99999) | list | sum) + (range(99999) | map('string') | list | length) }}"
    run = validate_call_ended(engine, mappings_copy, f'  properties:\n    busy: "{template}"\n')
    assert run.code == 0, run.out
    assert any(
        re.match(r"call\.ended\.yaml:1:1: note: [\d,]+ µs per message: a slow mapping", f) for f in findings(run)
    )
    assert "slowest call.ended.yaml" in run.out


def test_an_aircall_event_with_a_line_end_in_it_is_a_finding_not_a_mapping_nobody_uses(engine, mappings_copy):
    # `aircall_event: |` keeps the line end: a JSON Schema pattern's `$` lets it through.
    write(
        mappings_copy, "call.ended.yaml", "aircall_event: |\n  call.ended\nextends: _call.yaml\nsegment:\n  event: x\n"
    )
    run = engine("validate", str(mappings_copy))
    assert run.code == 1
    assert findings(run) == [
        "call.ended.yaml:1:16: aircall_event: 'call.ended\\n' is not an event name (like call.ended)"
    ]


def test_engine_events_keeps_each_row_of_its_table_one_row(engine, mappings_copy):
    write(mappings_copy, "call.ended.yaml", CALL_ENDED_HEAD.replace("  event: call.ended", '  event: "a | b"')
          + '  properties:\n    "p|q": "{{ data.id }}"\n')  # fmt: skip
    run = engine("events", "--mappings", str(mappings_copy))
    assert run.code == 0, run.err
    [row] = [line for line in run.out.splitlines() if line.startswith("| `call.ended` |")]
    assert row == "| `call.ended` | track `a \\| b` | `_call.yaml`, p\\|q |"


def test_what_map_and_select_give_is_a_list_so_nothing_depends_on_a_generators_address(engine, tmp_path):
    """A generator's repr (its address) reached Segment through `~` and stable_id: a different value each run."""
    template = "{{ stable_id('tags', data.tags | map(attribute='name')) ~ '|' ~ (data.tags | select) }}"
    folder = lone_mapping(tmp_path / "mappings", template)
    runs = {
        json.loads(engine("render", "-", "--mappings", str(folder), stdin=json.dumps(
            {**json.loads((FIXTURES / "number.created.json").read_text()), "data": {"tags": [{"name": "vip"}]}}
        ).encode()).out)[0]["properties"]["weird"]
        for _ in range(2)
    }  # fmt: skip
    [value] = runs
    assert "generator" not in value and value.endswith("|[{'name': 'vip'}]")
    (tmp_path / "second").mkdir()
    failing = lone_mapping(tmp_path / "second" / "mappings", "{{ ['a'] | map('nosuch') | string }}")
    run = engine("validate", str(failing))
    assert run.code == 1 and "Traceback" not in run.err
    assert findings(run) and all(line.startswith("number.created.yaml:7:12: ") for line in findings(run))


def test_a_long_value_the_schema_refuses_keeps_the_reason_in_its_finding(engine, mappings_copy):
    """Findings were cut at 199 characters: a 250-character event name kept its value and lost 'is too long'."""
    write(
        mappings_copy,
        "call.ended.yaml",
        CALL_ENDED_HEAD.replace("event: call.ended\n", f"event: {'call_ended_' * 25}\n"),
    )
    run = engine("validate", str(mappings_copy))
    assert run.code == 1
    [finding] = [line for line in findings(run) if line.startswith("call.ended.yaml:4")]
    assert finding.endswith("is too long") and "…" in finding and len(finding) < 260, finding


def test_a_control_character_in_a_mapping_file_is_a_finding_on_its_line_not_a_traceback(engine, mappings_copy):
    """PyYAML's reader refuses NUL, DEL and the like before parsing: that escaped as a ReaderError traceback."""
    with (mappings_copy / "call.ended.yaml").open("a", encoding="utf-8") as file:
        file.write("# bad \x00 here\n")
    run = engine("validate", str(mappings_copy))
    assert run.code == 1 and "Traceback" not in run.err
    assert findings(run) == ["call.ended.yaml:5:7: a character YAML does not allow in a file: U+0000; remove it"]
    rendered = engine("render", str(FIXTURES / "call.ended.json"), "--mappings", str(mappings_copy))
    assert rendered.code == 1 and "Traceback" not in rendered.err
