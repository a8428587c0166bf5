"""The Jinja environment mappings run in, and the compiler that turns one mapping into one callable.

Every string value in a mapping is parsed as a Jinja template. A template that is a single `{{ expression }}`
keeps the expression's native type (a number stays a number, null stays null); text around expressions makes a
string; text alone is a constant. All the values of a mapping are then assembled into one Jinja expression that
builds the whole list of messages, compiled once: one call per webhook instead of one render per property.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.optimizer import Optimizer
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from engine import values
from engine.mapping.findings import NOT_A_SEGMENT_NUMBER
from engine.values import e164, iso8601

# The names a template may read. Webhook data only ever arrives through these, as values. `fetched` holds what
# processing read from Aircall's REST API, as the mapping's `fetch` declares ({} otherwise).
TEMPLATE_VARIABLES = frozenset({"data", "event", "fetched", "resource", "timestamp"})
# And in a message with `each` (one message per element of a list): the element and its 0-based position.
EACH_VARIABLES = TEMPLATE_VARIABLES | {"item", "index"}


class TemplateProblem(Exception):
    """A template that cannot be compiled; `line` counts within the template (1-based)."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class MappingEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, where a missing field of the webhook is null rather than an error.

    Aircall leaves fields out (a ringing call has no user, an unknown caller no contact), so looking up a key
    a dict does not have, or anything on null, gives None; so does a field of a value of the wrong shape (a
    string where an object was expected). Dict keys are always read as data, never as dict methods
    (`data.items` is the field "items"). Everything else goes through the sandbox, which refuses attribute
    tricks and calls that would modify the payload. The names a template reads are checked before it runs
    (TEMPLATE_VARIABLES).
    """

    def __init__(self) -> None:
        super().__init__(autoescape=False, keep_trailing_newline=False)
        self.checked_templates: set[tuple[str, frozenset[str]]] = set()  # see parse_value
        self.filters["iso8601"] = iso8601
        self.filters["e164"] = e164
        self.filters["pluck"] = pluck
        self.filters["split_long"] = split_long
        # Jinja's map, select and the like give generators: their repr (an address) reached Segment through `~`,
        # `string` or `stable_id`, and their errors came only when the message was encoded. Lists here.
        for name in _LAZY_FILTERS:
            self.filters[name] = _eager(self.filters[name])
        self.globals["stable_id"] = stable_id

        # Compiled templates call environment.getattr for every `a.b`: bound here as plain functions on the
        # instance, they skip a method lookup per access (a quarter of a mapping's render time).
        self.getattr = self._data_getattr(super().getattr)  # type: ignore[method-assign]
        self.getitem = self._data_getitem(super().getitem)  # type: ignore[method-assign]

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # Our own helper needs none of the sandbox's checks, and is called for every call webhook.
        if __obj is stable_id:
            return stable_id(*args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    @staticmethod
    def _data_getattr(sandboxed: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
        def getattr(obj: Any, attribute: str) -> Any:
            if type(obj) is dict:
                return obj.get(attribute)
            if obj is None:
                return None
            return _missing_as_none(sandboxed(obj, attribute))

        return getattr

    @staticmethod
    def _data_getitem(sandboxed: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def getitem(obj: Any, argument: Any) -> Any:
            if type(obj) is dict:
                return obj.get(argument)
            if obj is None:
                return None
            if type(obj) is list and type(argument) is int:
                return obj[argument] if -len(obj) <= argument < len(obj) else None
            return _missing_as_none(sandboxed(obj, argument))

        return getitem


_LAZY_FILTERS = ("map", "select", "reject", "selectattr", "rejectattr")


def _eager(lazy: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's filter `lazy`, its result a list. It keeps what Jinja passes it (functools.wraps copies the
    pass_context mark), and `wraps_jinja` tells the compiler that its context is only ever Jinja's own use."""

    @functools.wraps(lazy)
    def eager(*args: Any, **kwargs: Any) -> list[Any]:
        return list(lazy(*args, **kwargs))

    eager.wraps_jinja = lazy  # type: ignore[attr-defined]
    return eager


def _missing_as_none(value: Any) -> Any:
    """A field looked up on a string, number or list (a payload of an unexpected shape) is missing: None.

    What the sandbox refuses stays refused: its Undefined raises SecurityError as soon as it is used.
    """
    if isinstance(value, Undefined) and value._undefined_exception is not SecurityError:
        return None
    return value


def pluck(items: Any, key: str, **where: Any) -> list[Any]:
    """`data.tags | pluck('name')`: one field of each object of a list; [] for a missing list.

    `data.participants | pluck('id', type='user')`: of the objects whose fields have these values only (a
    filter the compiled mapping calls directly, where `select` and `selectattr` go through Jinja's tests).
    """
    if not isinstance(items, list) or not items:  # often empty (no tags, no teams): no comprehension then
        return []
    if len(where) == 1:  # the common case, without a generator per object
        [(field, wanted)] = where.items()
        return [item.get(key) for item in items if type(item) is dict and item.get(field) == wanted]
    if where:
        return [
            item.get(key)
            for item in items
            if type(item) is dict and all(item.get(field) == value for field, value in where.items())
        ]
    return [item.get(key) if type(item) is dict else None for item in items]


# How deeply a template's expression may nest (lookups, filters, calls, operators, literals). Aircall's payloads
# are a few levels deep and the deepest shipped template is 12; the bound keeps every template within what
# Python's compiler takes (it refuses 200 nested parentheses, and a lookup compiles to two) and what Jinja's
# parser recurses through, so a mistake is a finding on its line, not a traceback at start-up.
MAX_TEMPLATE_DEPTH = 48
SPLIT_LONG_DEFAULT_BYTES = 8000  # four parts fit one Segment message (32 KB) with room for other properties
SPLIT_LONG_MIN_BYTES = 64


def split_long(items: Any, key: str, max_bytes: int = SPLIT_LONG_DEFAULT_BYTES) -> list[Any]:
    """`data.content.utterances | split_long('text')`: the list, where an object whose `key` holds text longer
    than `max_bytes` (UTF-8) is replaced by copies holding consecutive parts of it, in order.

    Every object gains `position` (its place in the list given, from 0: the same for every part of one object),
    `part` (from 1) and `parts` (how many): joined in `part` order, the texts of one object's copies are its text
    exactly, so a warehouse query puts it back together. Cuts fall after a space or a line
    end where there is one in the part's last quarter, and never inside a character. Not a list: [] (a missing
    field sends nothing); an element that is not an object is kept as it is.
    """
    if type(max_bytes) is not int or max_bytes < SPLIT_LONG_MIN_BYTES:
        raise ValueError(f"split_long: max_bytes must be a whole number of at least {SPLIT_LONG_MIN_BYTES}")
    if not isinstance(items, list):
        return []
    result: list[Any] = []
    for position, item in enumerate(items):
        if type(item) is not dict:
            result.append(item)
            continue
        text = item.get(key)
        pieces = _cut(text, max_bytes) if isinstance(text, str) and len(text) * 4 > max_bytes else None
        if pieces is None:
            result.append({**item, "position": position, "part": 1, "parts": 1})
            continue
        result.extend(
            {**item, key: piece, "position": position, "part": n, "parts": len(pieces)}
            for n, piece in enumerate(pieces, 1)
        )
    return result


def _cut(text: str, max_bytes: int) -> list[str] | None:
    """`text` in consecutive pieces of at most `max_bytes` UTF-8 bytes each; None when it fits in one."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return None
    pieces: list[str] = []
    start = 0
    while len(encoded) - start > max_bytes:
        end = start + max_bytes
        while encoded[end] & 0xC0 == 0x80:  # a continuation byte: the cut would fall inside a character
            end -= 1
        space = max(encoded.rfind(b" ", start, end), encoded.rfind(b"\n", start, end))
        if space >= start + max_bytes * 3 // 4:
            end = space + 1  # the space stays with the piece before it
        pieces.append(encoded[start:end].decode("utf-8", "surrogatepass"))
        start = end
    pieces.append(encoded[start:].decode("utf-8", "surrogatepass"))
    return pieces


def stable_id(*parts: Any) -> str | None:
    """engine.values.stable_id for templates: a value the sandbox refused (an Undefined) is a missing part."""
    if any(isinstance(part, Undefined) for part in parts):
        return None
    return values.stable_id(*parts)


# ---------------------------------------------------------------------------------------------------------------
# Compiling


def _check_finite(value: object, line: int) -> None:
    """A number JSON cannot carry (1.0e+400 is infinity to YAML and to Jinja; 10**400 is beyond what Segment reads
    numbers as): refused where it is written, rather than failing every render."""
    if isinstance(value, float) and not math.isfinite(value):
        raise TemplateProblem(NOT_A_SEGMENT_NUMBER, line)
    if type(value) is int and abs(value) > sys.float_info.max:
        raise TemplateProblem(NOT_A_SEGMENT_NUMBER, line)


def parse_value(
    env: MappingEnvironment, value: str | int | float | bool | None, names: frozenset[str] = TEMPLATE_VARIABLES
) -> nodes.Expr:
    """One mapping value as a Jinja expression node; TemplateProblem with the line inside the template.

    A single `{{ expression }}` keeps the expression's own type; text, with or without expressions, is a string.
    `names`: the variables it may read (EACH_VARIABLES in a message with `each`).
    """
    if not isinstance(value, str):
        _check_finite(value, 1)
        return nodes.Const(value)
    try:
        tree = env.parse(value)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno or 1) from None
    except RecursionError:  # Jinja's parser recurses a few frames per parenthesis: 70 of them are too many
        raise TemplateProblem(_too_deep(None), 1) from None
    except ValueError:  # Python's refusal to read an integer past 4,300 digits, from Jinja's lexer
        raise TemplateProblem(NOT_A_SEGMENT_NUMBER, 1) from None
    # A base's templates come once per event file that extends it (_call.yaml's, 19 times): the checks below
    # cost four times the parse, and their outcome depends only on the text and the names it may read.
    checked = (value, names)
    if checked not in env.checked_templates:
        _check_tree(tree, env, names, value)
        env.checked_templates.add(checked)
    if not tree.body:
        return nodes.Const("")
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        statement = next(n for n in tree.body if not isinstance(n, nodes.Output))
        raise TemplateProblem(
            "statements ({% ... %}) are not supported in mapping values; "
            "use an inline expression such as {{ a if condition else b }}",
            statement.lineno,
        )
    parts = tree.body[0].nodes
    expressions = [p for p in parts if not isinstance(p, nodes.TemplateData)]
    text = [p for p in parts if isinstance(p, nodes.TemplateData)]
    if not expressions:
        return nodes.Const("".join(t.data for t in text))
    if len(expressions) == 1 and all(not t.data.strip() for t in text):
        return expressions[0]
    return nodes.Concat([nodes.Const(p.data) if isinstance(p, nodes.TemplateData) else p for p in parts])


def _check_tree(tree: nodes.Template, env: MappingEnvironment, names: frozenset[str], text: str) -> None:
    """Its depth, the names it reads, and every constant it holds or Jinja would fold it to. Raises TemplateProblem."""
    _check_depth(tree)
    try:
        _check_names(tree, env, names)
        # Constants as written, and as Jinja folds them when it compiles ({{ 1e308 * 10 }}, {{ 'inf' | float }}).
        # The optimizer rewrites the tree it is given: a second parse of the text is its copy (a sixth of
        # what copy.deepcopy of the tree cost, which was a fifth of `engine validate`).
        folded = Optimizer(env).visit(env.parse(text), EvalContext(env))
    except ValueError:  # the same refusal, of a constant Jinja folds when it compiles: {{ 10 ** 5000 }}
        raise TemplateProblem(NOT_A_SEGMENT_NUMBER, 1) from None
    except RecursionError:  # thousands of operators in a row: {{ 1 + 1 + ... }}
        raise TemplateProblem(_too_deep(None), 1) from None
    for constant in itertools.chain(tree.find_all(nodes.Const), folded.find_all(nodes.Const)):
        _check_finite(constant.value, constant.lineno)


def _check_depth(tree: nodes.Template) -> None:
    """At most MAX_TEMPLATE_DEPTH levels of expression, walked without recursion (the tree may be deeper than
    Python's own recursion limit allows a walk)."""
    pending: list[tuple[nodes.Node, int]] = [(node, 1) for node in tree.body]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_TEMPLATE_DEPTH:
            raise TemplateProblem(_too_deep(MAX_TEMPLATE_DEPTH), node.lineno or 1)
        pending.extend((child, depth + 1) for child in node.iter_child_nodes())


def _too_deep(depth: int | None) -> str:
    past = f"more than {depth} levels" if depth else "too deeply to parse"
    return (
        f"template nests {past} (lookups, filters, calls, parentheses); "
        f"{MAX_TEMPLATE_DEPTH} at most: no Aircall payload needs more, so shorten it"
    )


def _check_names(tree: nodes.Template, env: MappingEnvironment, names: frozenset[str]) -> None:
    _check_filters_and_tests(tree, env)
    try:  # this compiles the template: whatever else Jinja's compiler refuses is refused here, with its line
        undeclared = meta.find_undeclared_variables(tree)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template error: {exc.message}", exc.lineno or 1) from None
    unknown = sorted(undeclared - names - env.globals.keys())
    if unknown:
        name = unknown[0]
        line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == name), 1)
        hint = ""
        if name in EACH_VARIABLES:
            hint = " (item and index are read only in a message that has `each`)"
        raise TemplateProblem(
            f"unknown name {name!r} in template; templates can read {', '.join(sorted(names))}{hint}", line
        )
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attribute = node.attr if isinstance(node, nodes.Getattr) else _const_string(node.arg)
        if attribute is not None and attribute.startswith("_"):
            raise TemplateProblem(
                f"access to {attribute!r} is not allowed: templates run in a sandbox and read only webhook data",
                node.lineno,
            )


def _check_filters_and_tests(tree: nodes.Template, env: MappingEnvironment) -> None:
    """Every filter and test named must exist. Jinja checks this only when it compiles the whole mapping (an
    exception with no line of ours), and inside a condition not until the branch runs."""
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        kind, known = ("filter", env.filters) if isinstance(node, nodes.Filter) else ("test", env.tests)
        if node.name not in known:
            close = difflib.get_close_matches(node.name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TemplateProblem(f"unknown {kind} {node.name!r}{hint}", node.lineno)


def _const_string(node: nodes.Node) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


def dict_node(items: Iterable[tuple[str, nodes.Expr]]) -> nodes.Dict:
    return nodes.Dict([nodes.Pair(nodes.Const(key), value) for key, value in items])


def compile_expression(env: MappingEnvironment, expr: nodes.Expr) -> Callable[[Mapping[str, Any]], Any]:
    """Compile an expression tree into a function of the template variables that returns its native value."""
    body = [nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)]
    tree = nodes.Template(body, lineno=1)
    tree.set_environment(env)
    template = env.from_string(tree)
    root = template.root_render_func
    # Template.new_context copies the template's globals, a ChainMap, twice per render: 5 of a call mapping's
    # 25 µs. Flattened once here, the same Context costs under 1 µs to build.
    template_globals = dict(template.globals)
    context_class = env.context_class

    def evaluate(variables: Mapping[str, Any]) -> Any:
        context = context_class(env, {**template_globals, **variables}, None, {})
        for _ in root(context):
            pass
        result = context.vars.get("result", missing)
        if result is missing:  # pragma: no cover - the assignment always runs
            raise RuntimeError("expression produced no result")
        return result

    return evaluate
