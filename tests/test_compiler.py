"""The compiled mappings give what Jinja's runtime gives: the same bytes, the same errors, the same refusals.

Every mapping is loaded twice, once compiled to Python (the default) and once on Jinja's runtime, and both render
the sample webhooks and payloads Hypothesis makes from them (fields missing, of the wrong type, unicode, huge
numbers, nested junk). Single templates that exercise Jinja's semantics (attribute lookups on values that are not
objects, filters with arguments, `and`/`or` returning an operand, comparisons of mixed types...) are compared
the same way, errors included.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jinja2 import nodes
from jinja2.runtime import Undefined

from engine.aircall.envelope import Webhook, parse_webhook
from engine.mapping.compiler import Unsupported, _Writer, compile_messages, compile_value
from engine.mapping.load import load_mappings
from engine.mapping.message import RenderError
from engine.mapping.templating import MappingEnvironment, compile_expression, parse_value
from tests.conftest import MAPPINGS, fixture_paths

COMPILED = load_mappings(MAPPINGS)
JINJA = load_mappings(MAPPINGS, runtime="jinja")
SAMPLES = [parse_webhook(path.read_bytes()) for path in fixture_paths()]


def outcome(mappings, webhook: Webhook):
    """What a webhook becomes: the messages' ids and bytes, or the error's text."""
    try:
        return [tuple(encoded) for encoded in mappings.get(webhook.event).render_json(webhook)]
    except RenderError as exc:
        return ("RenderError", str(exc))
    except Exception as exc:  # not the mapping's: a lone surrogate cannot be hashed (UnicodeEncodeError)
        return (type(exc).__name__, str(exc))


def test_every_mapping_is_compiled_with_nothing_left_to_jinja():
    event_files = [p for p in MAPPINGS.glob("*.yaml") if not p.name.startswith("_")]
    assert len(COMPILED) == len(event_files)
    for mapping in COMPILED.by_event.values():
        assert mapping.on_jinja == (), mapping.path.name


@pytest.mark.parametrize("webhook", SAMPLES, ids=lambda w: w.event)
def test_sample_webhook_gives_the_same_bytes_compiled_and_on_jinja(webhook):
    compiled = COMPILED.get(webhook.event)
    variables = webhook.template_variables()
    assert compiled._build(variables) == JINJA.get(webhook.event)._build(variables)
    assert outcome(COMPILED, webhook) == outcome(JINJA, webhook)


# -- Hypothesis payloads -----------------------------------------------------------------------------------------


def _field_names() -> list[str]:
    """Every attribute the shipped mappings read, so that generated objects hit real lookups."""
    names = set()
    for mapping in COMPILED.by_event.values():
        for template in mapping.fields:
            names.update(n.attr for n in template.node.find_all(nodes.Getattr))
            names.update(n.value for n in template.node.find_all(nodes.Const) if isinstance(n.value, str))
    return sorted(names)


FIELD_NAMES = _field_names()
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6))
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 2**63, 2**64, -(2**63) - 1, 10**30, 1_700_000_000, 253402300800]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e16, 1e-05, 2.5e-7, 0.1, 1.5, 1e308, 5e-324, 1700000000.999]),
)
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "+33 1 76 36 06 95", "anonymous", "2025-11-24T12:00:00Z", "{{ 7*7 }}", "日本", "Zoë"]),
    st.sampled_from(["https://x.example/a", "none", "None", "True", "0", "1e3", "\x00", "\ud800"]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=12
)


@st.composite
def payloads(draw) -> Webhook:
    """A sample webhook's data with some fields dropped, some replaced by junk, some junk added."""
    sample = draw(st.sampled_from(SAMPLES))
    data = json.loads(json.dumps(sample.data))
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=len(data), unique=True)) if data else []:
        action = draw(st.sampled_from(["drop", "replace", "nest"]))
        if action == "drop":
            del data[key]
        elif action == "replace":
            data[key] = draw(json_values)
        else:
            data[key] = draw(st.dictionaries(keys, json_values, max_size=4))
    data.update(draw(st.dictionaries(keys, json_values, max_size=3)))
    return Webhook(sample.resource, sample.event, sample.timestamp, "", data)


EVENTS_OF = {
    resource: [w.event for w in SAMPLES if w.resource == resource] for resource in {w.resource for w in SAMPLES}
}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads())
def test_generated_payloads_give_the_same_bytes_or_error_compiled_and_on_jinja(webhook):
    failed = 0
    for name in dict.fromkeys(EVENTS_OF[webhook.resource]):  # the payload through every mapping of its resource
        other = Webhook(webhook.resource, name, webhook.timestamp, "", webhook.data)
        result = outcome(COMPILED, other)
        assert result == outcome(JINJA, other), name
        failed += isinstance(result, tuple)
    event("some mappings fail on this payload" if failed else "every mapping renders this payload")


# -- Jinja's semantics, template by template ---------------------------------------------------------------------

ENV = MappingEnvironment()
TEMPLATES = [
    "{{ data.a.b }}",
    "{{ data.a['b'] }}",
    "{{ data.a[0] }}",
    "{{ data.a[-1] }}",
    "{{ data.a[data.b] }}",
    "{{ data.a[1:] }}",
    "{{ data.a[:2] }}",
    "{{ data.a[::-1] }}",
    "{{ data.a.items }}",
    "{{ data.a.real }}",
    "{{ data.a | round }}",
    "{{ data.a | round(1) }}",
    "{{ data.a | round(2, 'floor') }}",
    "{{ data.a | int }}",
    "{{ data.a | int(7) }}",
    "{{ data.a | float }}",
    "{{ data.a | default('x') }}",
    "{{ data.a | default('x', true) }}",
    "{{ data.a | length }}",
    "{{ data.a | string }}",
    "{{ data.a | list }}",
    "{{ data.a | join(',') }}",
    "{{ data.a | map('e164') | list }}",
    "{{ data.a | pluck('b') }}",
    "{{ data.a | iso8601 }}",
    "{{ data.a | e164 }}",
    "{{ data.a | abs }}",
    "{{ data.a | upper }}",
    "{{ data.a | replace('a', 'b') }}",
    "{{ data.a | first }}",
    "{{ data.a | sort | list }}",
    "{{ data.a | tojson }}",
    "{{ data.a is number }}",
    "{{ data.a is none }}",
    "{{ data.a is not none }}",
    "{{ data.a is string }}",
    "{{ data.a is sequence }}",
    "{{ data.a is mapping }}",
    "{{ data.a is defined }}",
    "{{ data.a is divisibleby(3) }}",
    "{{ data.a ~ data.b }}",
    "{{ data.a ~ 'x' ~ none ~ true }}",
    "id: {{ data.a }} and {{ data.b }}",
    "{{ data.a }}{{ data.b }}",
    "{{ data.a in data.b }}",
    "{{ data.a not in data.b }}",
    "{{ 'x' in data.a }}",
    "{{ data.a == data.b }}",
    "{{ data.a != 1 }}",
    "{{ data.a < data.b }}",
    "{{ 0 < data.a <= 10 }}",
    "{{ data.a and data.b }}",
    "{{ data.a or data.b }}",
    "{{ not data.a }}",
    "{{ data.a if data.b else data.c }}",
    "{{ data.a if data.b }}",
    "{{ data.a + data.b }}",
    "{{ data.a - 1 }}",
    "{{ data.a * 2 }}",
    "{{ data.a / data.b }}",
    "{{ data.a // 2 }}",
    "{{ data.a % 3 }}",
    "{{ data.a ** 2 }}",
    "{{ -data.a }}",
    "{{ +data.a }}",
    "{{ [data.a, data.b, 1] }}",
    "{{ (data.a, data.b) }}",
    "{{ (data.a,) }}",
    "{{ {'x': data.a, 'y': [data.b]} }}",
    "{{ {data.a: 1} }}",
    "{{ stable_id('x', data.a) }}",
    "{{ stable_id(data.a, data.b) or stable_id('call', data.c) }}",
    "{{ stable_id }}",
    "{{ (data.a | pluck('b'))[0] }}",
    "{{ data.a.b.c.d }}",
    "{{ event ~ resource ~ timestamp }}",
    "{{ 7 * 7 }}",
    "{{ 1 / 0 }}",
    "{{ data.a.append }}",
    "{{ data.a.append.b }}",
    "{{ data.a | attr('b') }}",
    "{{ data.a | selectattr('b') | list }}",
    "{{ data.a | batch(2) | list }}",
    "{{ data.a | dictsort }}",
    "{{ data.a | sum }}",
    "{{ data.a | max }}",
    "{{ data.a | unique | list }}",
    "{{ data.a | truncate(5) }}",
    "{{ data.a | format(1) }}",
    "text {{ data.a if data.b }} end",
]


def _same(a, b) -> bool:
    """Equal values of the same types (NaN equal to NaN, Undefined by its message), containers recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Undefined):
        return a._undefined_message == b._undefined_message
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "__next__"):  # map() without | list: the same items
        return _same(list(a), list(b))
    return a == b


def _evaluate(function, variables):
    try:
        return "value", function(variables)
    except Exception as exc:
        return "error", (type(exc).__name__, str(exc))


def _both(template: str):
    node = parse_value(ENV, template)
    return compile_value(ENV, node), compile_expression(ENV, parse_value(ENV, template))


COMPILED_TEMPLATES = {template: _both(template) for template in TEMPLATES}


def test_semantic_templates_compile_without_jinja_except_where_said():
    on_jinja = []
    for template in TEMPLATES:
        program = compile_messages(ENV, node := parse_value(ENV, template), [node])
        if program.fallbacks:
            on_jinja.append(template)
    # Constants that are not finite ({{ 1e400 }}, {{ 'nan' | float }}) are refused by parse_value, where Jinja
    # would write them as the names inf and nan (tests/test_validate_cli.py). The unknown filter is folded away with
    # its branch, as Jinja does.
    assert on_jinja == []


data_values = st.one_of(json_values, st.floats(), st.sampled_from([float("nan"), float("inf"), -float("inf")]))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=data_values, b=data_values, c=data_values)
def test_each_template_gives_what_jinja_gives(a, b, c):
    variables = {"data": {"a": a, "b": b, "c": c}, "event": "call.ended", "resource": "call", "timestamp": 1}
    for template, (compiled, jinja) in COMPILED_TEMPLATES.items():
        (kind, got), (expected_kind, expected) = _evaluate(compiled, variables), _evaluate(jinja, variables)
        assert kind == expected_kind, (template, got, expected)
        assert _same(got, expected), (template, got, expected)


# -- the sandbox -------------------------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ data.__class__ }}",
    "{{ data['__init__'] }}",
    "{{ data.id.__class__ }}",
    "{{ data.tags.append(1) }}",
    "{{ data.name.format(data) }}",
    "{{ range(10) }}",
    "{{ lipsum() }}",
    "{{ namespace(a=1) }}",
    "{{ cycler }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_compiler_refuses_what_could_escape_the_sandbox(template):
    node = ENV.parse(template).body[0].nodes[0]  # no name check: the compiler must refuse on its own
    with pytest.raises(Unsupported):
        _Writer(ENV, {}).translate(node)


def test_refused_template_runs_on_jinja_whose_sandbox_refuses_the_call():
    node = parse_value(ENV, "{{ data.tags.append(1) }}")
    program = compile_messages(ENV, node, [node])
    assert [f.reason for f in program.fallbacks] == ["calls other than stable_id(...)"]
    with pytest.raises(Exception, match="unsafe"):
        program.function({"data": {"tags": []}})


def test_a_key_read_from_the_payload_cannot_reach_an_attribute():
    compiled, jinja = _both("{{ data.a[data.b] }}")
    for value in ("text", 5, [1], None):
        variables = {"data": {"a": value, "b": "__class__"}}
        assert _same(_evaluate(compiled, variables), _evaluate(jinja, variables))
        kind, result = _evaluate(compiled, variables)
        assert not (kind == "value" and isinstance(result, type))


def test_generated_code_has_no_builtins_and_no_template_text():
    node = parse_value(ENV, "{{ data.x ~ '\"); import os; os.system(\"echo\") #' ~ '\\n' }}")
    program = compile_messages(ENV, node, [node])
    assert program.function.__globals__["__builtins__"] == {}
    assert "import os" not in re.sub(r"'(?:[^'\\]|\\.)*'", "''", program.source)  # only inside a literal
    assert program.function({"data": {"x": 1}}) == '1"); import os; os.system("echo") #\n'


def test_function_of_the_webhook_gives_what_the_function_of_its_variables_gives():
    template = "{{ data.user.name.upper() if data.user else none }} {{ data.id | string | list | join('-') }}"
    node = parse_value(ENV, template)
    program = compile_messages(ENV, node, [node])
    assert [f.reason for f in program.fallbacks] == ["calls other than stable_id(...)"]
    for webhook in SAMPLES:
        assert program.of_webhook(webhook) == program.function(webhook.template_variables())
