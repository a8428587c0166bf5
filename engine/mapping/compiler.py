"""Compiling a mapping's Jinja expressions to one plain Python function, with the semantics of Jinja's runtime.

Jinja compiles a template to Python too, but every `a.b` goes through the environment's sandboxed getattr,
every call through the sandbox's checks, and every render builds a Context. Mappings are expressions over
webhook data, so they can compile to less: `data.user.id` becomes a dict lookup inlined where the value is a
dict (and the environment's own getattr, null for what is missing, where it is not), filters and helpers are
called directly, and the whole list of messages is one Python expression in one function.

What the compiler emits is decided from the Jinja AST alone, node type by node type. Template text and webhook
data never become source: names are the compiler's own, constants are written with repr() only after their
type is checked (str, int, float, bool, None and lists, tuples and dicts of those), and everything else the
function needs (filters, tests, the getattr and getitem of the environment, Jinja callables) is passed in the
namespace the source is executed in, which has no builtins. A node the compiler does not translate (a method
call, a global other than stable_id, a filter with *args, ...) makes its whole template value run on Jinja's
runtime, sandbox included; `Program.fallbacks` says which and why, and `engine validate` prints it.

The function must give what Jinja gives, values and errors alike: tests/test_compiler.py runs every mapping
both ways on the sample webhooks and on payloads Hypothesis makes.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Number
from typing import Any

import jinja2.filters
import jinja2.tests
from jinja2 import nodes
from jinja2.nodes import EvalContext
from jinja2.optimizer import Optimizer
from jinja2.runtime import Undefined, str_join
from jinja2.tests import test_none, test_number

from engine.mapping.templating import TEMPLATE_VARIABLES, MappingEnvironment, compile_expression, stable_id


class Unsupported(Exception):
    """A node the compiler does not translate; `lineno` is its line within the template."""

    def __init__(self, reason: str, lineno: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lineno = lineno or 1


@dataclass(frozen=True)
class Fallback:
    """A template value that runs on Jinja's runtime, and why."""

    index: int  # its position in the `roots` given to compile_messages
    lineno: int  # the line, within the template, of the node the compiler does not translate
    reason: str


@dataclass
class Program:
    """The compiled function of the template variables, its source (for reading) and what runs on Jinja."""

    function: Callable[[Mapping[str, Any]], Any]
    source: str
    fallbacks: list[Fallback] = field(default_factory=list)
    # The same function of a Webhook: what its template_variables() would give, without the dict.
    of_webhook: Callable[[Any], Any] | None = None


def compile_messages(
    env: MappingEnvironment,
    expr: nodes.Expr,
    roots: Sequence[nodes.Expr],
    names: frozenset[str] = TEMPLATE_VARIABLES,
) -> Program:
    """One function giving what `compile_expression(env, expr)` gives.

    `roots` are the template values inside `expr` (one per mapping value): a template with a node the compiler
    does not translate runs on Jinja as a whole, so that Jinja sees it as it would inside the whole expression.
    `names` are the variables it reads; with names beyond a webhook's own (`item` in a message with `each`) the
    Program has no function of a webhook, only of the variables.
    """
    writer = _Writer(env, {id(root): index for index, root in enumerate(roots)}, names)
    try:
        writer.prepare(expr, roots)
        # Twice: where `data` is a dict (always, for a webhook: `data.x` is then its get), and for anything else.
        fast = writer.translate_twice(expr, data_is_dict=True)
        slow = writer.translate_twice(expr, data_is_dict=False)
    except Unsupported as problem:  # outside any template: not a mapping's shape; Jinja does all of it
        evaluate = compile_expression(env, expr)
        return Program(evaluate, "", [Fallback(-1, problem.lineno, problem.reason)])
    try:
        return writer.finish(fast, slow)
    except (SyntaxError, RecursionError, MemoryError) as problem:
        # Python's compiler has limits of its own (200 nested parentheses). Templates are bounded well within
        # them (MAX_TEMPLATE_DEPTH), so this is a safety net: Jinja's runtime gives the same values, slower.
        evaluate = compile_expression(env, expr)
        return Program(evaluate, "", [Fallback(-1, 1, f"too large for the compiler ({type(problem).__name__})")])


def compile_value(
    env: MappingEnvironment, expr: nodes.Expr, names: frozenset[str] = TEMPLATE_VARIABLES
) -> Callable[[Mapping[str, Any]], Any]:
    """One template value on its own (diagnostics evaluate templates one by one)."""
    return compile_messages(env, expr, [expr], names).function


# ---------------------------------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_BINARY = {
    nodes.Add: "+",
    nodes.Sub: "-",
    nodes.Mul: "*",
    nodes.Div: "/",
    nodes.FloorDiv: "//",
    nodes.Mod: "%",
    nodes.Pow: "**",
}
_UNARY = {nodes.Neg: "-", nodes.Pos: "+"}
_COMPARISONS = {"eq": "==", "ne": "!=", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<=", "in": "in", "notin": "not in"}
_MAX_LITERAL_INT = 10**18  # larger integers go through the namespace (repr of huge ints is slow, or refused)


def _literal(value: Any) -> bool:
    """Whether repr(value) is a Python literal that evaluates to an equal value of the same types."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return True
    if kind is int:
        return -_MAX_LITERAL_INT < value < _MAX_LITERAL_INT
    if kind is float:
        return math.isfinite(value)
    if kind is list or kind is tuple:
        return all(_literal(item) for item in value)
    if kind is dict:
        return all(_literal(k) and _literal(v) for k, v in value.items())
    return False


class _Writer:
    def __init__(
        self, env: MappingEnvironment, roots: dict[int, int], names: frozenset[str] = TEMPLATE_VARIABLES
    ) -> None:
        if not isinstance(env, MappingEnvironment):
            raise TypeError("the compiler translates templates of a MappingEnvironment")
        self.env = env
        self.names = names
        self.roots = roots
        self.namespace: dict[str, Any] = {
            "__builtins__": {},
            "_type": type,
            "_dict": dict,
            "_getattr": env.getattr,
            "_getitem": env.getitem,
            "_undefined": env.undefined,
            "_Undefined": Undefined,
            "_str_join": str_join,
            "_isinstance": isinstance,
            "_Number": Number,
            "_INT_FLOAT": (int, float),  # and their subclasses, bool included: all Numbers
            "_NOT_NUMBERS": (type(None), str, list, dict),
            "_list": list,
            "_partial": functools.partial,
            "_get_none": _get_none,
            "_len": len,
        }
        self.by_object: dict[int, str] = {}
        self.variables: set[str] = set()
        self.needs_context = False
        self.needs_eval_context = False
        # chain of lookups -> the local holding its value, and the local saying whether that value is a dict
        self.bound: dict[tuple[Any, ...], str] = {}
        self.dict_flags: dict[tuple[Any, ...], str] = {}
        # chain -> a local holding its value's lookup function: the dict's own get (a bound method is the quickest
        # call), or the environment's getattr bound to it
        self.getters: dict[tuple[Any, ...], str] = {}
        self.known_dicts: set[tuple[Any, ...]] = set()  # chains whose value is a dict where the code runs
        self.uses: dict[tuple[Any, ...], int] = {}
        self.optimized: dict[int, nodes.Node] = {}  # id(template) -> the template after constant folding
        self.on_jinja: dict[int, str] = {}  # template index -> the name of its Jinja callable
        self.useful: set[int | None] | None = None
        self.reused: set[int | None] = set()
        self.sites = 0
        self.site_of: dict[str, int] = {}
        self.reset()
        self.fallbacks: list[Fallback] = []
        self.optimizer = Optimizer(env)
        self.eval_ctx = EvalContext(env)

    # -- the function

    def prepare(self, expr: nodes.Expr, roots: Sequence[nodes.Expr]) -> None:
        """Jinja's constant folding of every template, and how often each chain of lookups occurs."""
        for root in roots:
            self.optimized[id(root)] = self.optimizer.visit(root, self.eval_ctx)  # as Jinja does when it compiles
        self.uses.clear()
        pending: list[nodes.Node] = [expr]
        while pending:
            node = pending.pop()
            node = self.optimized.get(id(node), node)
            chain = _chain(node, self.names)
            if chain is not None:
                self.uses[chain] = self.uses.get(chain, 0) + 1
            pending.extend(node.iter_child_nodes())

    def translate_twice(self, expr: nodes.Expr, data_is_dict: bool) -> str:
        """Translated once to learn which values bound to locals are used again, then again binding only those."""
        self.begin(data_is_dict, useful=None)
        self.expression(expr)
        self.begin(data_is_dict, useful=self.reused)
        return self.expression(expr)

    def begin(self, data_is_dict: bool, useful: set[int | None] | None) -> None:
        self.reset()
        if data_is_dict:
            self.known_dicts = {("data",)}
            self.getters[("data",)] = "_get_data"
        self.useful = useful  # the binding sites (in translation order) worth a local; None: all
        self.reused = set()
        self.sites = 0
        self.site_of = {}

    def reset(self) -> None:
        """Ready to translate the expression again, under other assumptions."""
        self.known_dicts = set()
        self.bound = {(name,): f"v_{name}" for name in self.names}
        self.dict_flags = {}
        self.getters = {}
        self.temporaries = 0  # the two versions are two branches of one function: their locals may share names

    def finish(self, fast: str, slow: str) -> Program:
        # What a filter may ask for. Jinja's own filters and tests only read the environment from it (map calls
        # the filter it names with it): one made here serves every call. Otherwise one per call, as Jinja's.
        shared = _context_blind(self.env)
        body = []
        if self.needs_context and not shared:
            body += ["    context = _context(variables)", "    eval_ctx = context.eval_ctx"]
        elif self.needs_eval_context and not shared:
            body.append("    eval_ctx = _EvalContext(_env)")
        if fast != slow:
            body += ["    if _type(v_data) is _dict:", "        _get_data = v_data.get", f"        return {fast}"]
        body.append(f"    return {slow}")
        # The same body twice: a function of the template variables, and one of the webhook, which reads them
        # from its attributes (a webhook has all four) and makes the dict only for what runs on Jinja.
        lines = ["def build(variables):"]
        for name in sorted(self.variables):
            lines.append(f"    v_{name} = variables[{name!r}] if {name!r} in variables else _undefined(name={name!r})")
        lines += [*body, "", "def build_webhook(webhook):"]
        lines += [f"    v_{name} = webhook.{name}" for name in sorted(self.variables)]
        if self.fallbacks or (self.needs_context and not shared):
            lines.append("    variables = webhook.template_variables()")
        lines += body
        source = "\n".join(lines) + "\n"
        namespace = dict(self.namespace)
        if shared and (self.needs_context or self.needs_eval_context):
            context = _context_factory(self.env)({})
            namespace.update(context=context, eval_ctx=context.eval_ctx)
        elif self.needs_context:
            namespace["_context"] = _context_factory(self.env)
        elif self.needs_eval_context:  # a filter that reads only the evaluation context (list, join, ...)
            namespace.update(_EvalContext=EvalContext, _env=self.env)
        exec(compile(source, "<mapping>", "exec"), namespace)
        of_webhook = namespace["build_webhook"] if self.names <= TEMPLATE_VARIABLES else None
        return Program(namespace["build"], source, self.fallbacks, of_webhook)

    def ref(self, obj: Any, prefix: str) -> str:
        """A name for `obj` in the function's namespace."""
        key = id(obj)
        name = self.by_object.get(key)
        if name is None:
            name = f"_{prefix}{len(self.by_object)}"
            self.by_object[key] = name
            self.namespace[name] = obj
        return name

    def holder(self, code: str) -> tuple[str, str]:
        """A name for the value of `code`, and the code that evaluates and binds it (once, before the name)."""
        if code.isidentifier():
            return code, code
        name = self.temporary()
        return name, f"({name} := {code})"

    def temporary(self, prefix: str = "_t") -> str:
        self.temporaries += 1
        return f"{prefix}{self.temporaries}"

    # -- expressions

    def expression(self, node: nodes.Node) -> str:
        index = self.roots.get(id(node))
        if index is None:
            return self.translate(node)
        scope = self.scope()
        try:
            return self.translate(self.optimized[id(node)])
        except Unsupported as problem:
            self.restore(scope)  # nothing of this template is in the function
            if index not in self.on_jinja:
                self.fallbacks.append(Fallback(index, problem.lineno, problem.reason))
                self.on_jinja[index] = self.ref(compile_expression(self.env, node), "jinja")
            return f"{self.on_jinja[index]}(variables)"

    def translate(self, node: nodes.Node) -> str:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise Unsupported(f"the compiler does not translate {type(node).__name__} expressions", node.lineno)
        return method(node)

    def items(self, items: Iterable[nodes.Node]) -> list[str]:
        return [self.expression(item) for item in items]

    def visit_Const(self, node: nodes.Const) -> str:
        if not _literal(node.value):
            raise Unsupported(f"a constant of type {type(node.value).__name__}", node.lineno)
        return repr(node.value)

    def visit_Name(self, node: nodes.Name) -> str:
        if node.ctx != "load":
            raise Unsupported("assignment", node.lineno)
        if node.name in self.names:
            self.variables.add(node.name)
            return f"v_{node.name}"
        if node.name == "stable_id" and self.env.globals.get("stable_id") is stable_id:
            return self.ref(stable_id, "helper")
        raise Unsupported(f"the name {node.name!r}", node.lineno)

    # -- lookups: `a.b`, `a['b']`, `a[0]`
    #
    # A chain of lookups with constant keys from a template variable (data.user.id) is a pure function of the
    # variables: the value is kept in a local the first time the chain is evaluated and reused after, as is
    # whether it is a dict. "The first time" is in the order Python evaluates the expression; what is bound
    # where evaluation is conditional (a branch of `a if b else c`, the right side of `and`/`or`, the third
    # operand of `a < b < c`) is forgotten after it (see conditional()).

    def visit_Getattr(self, node: nodes.Getattr) -> str:
        attribute = node.attr
        if not isinstance(attribute, str) or attribute.startswith("_"):
            raise Unsupported(f"access to {attribute!r}", node.lineno)
        return self.lookup(node, repr(attribute), "_getattr")

    def visit_Getitem(self, node: nodes.Getitem) -> str:
        if isinstance(node.arg, nodes.Slice):  # Jinja slices with Python's own subscript
            target = self.expression(node.node)
            return f"{target}[{self.visit_Slice(node.arg)}]"
        if not isinstance(node.arg, nodes.Const):  # the key is evaluated after the target, as Jinja does
            target = self.expression(node.node)
            return f"_getitem({target}, {self.expression(node.arg)})"
        if isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            raise Unsupported(f"access to {node.arg.value!r}", node.lineno)
        return self.lookup(node, self.visit_Const(node.arg), "_getitem")

    def lookup(self, node: nodes.Getattr | nodes.Getitem, key: str, fallback: str) -> str:
        """The environment's getattr or getitem of a constant key, with its dict case inlined (a dict's get)."""
        chain = _chain(node, self.names)
        if chain is not None and chain in self.bound:
            self.reused.add(self.site_of.get(self.bound[chain]))
            return self.bound[chain]
        target = self.expression(node.node)
        target_chain = _chain(node.node, self.names)
        holder = self.bound.get(target_chain) if target_chain is not None else None
        if holder is not None:
            self.reused.add(self.site_of.get(holder))
        if target_chain in self.known_dicts:  # a dict: getattr and getitem are both its get
            code = f"{self.getters[target_chain]}({key})"
        elif fallback == "_getattr" and holder is not None:
            getter = self.getters.get(target_chain)
            if getter is None:  # the target is (now) in a local; its getter will be too
                getter = self.getters[target_chain] = self.temporary("_g")
                other = f"_get_none if {holder} is None else _partial(_getattr, {holder})"  # getattr of None is None
                choose = f"({holder}.get if _type({target}) is _dict else {other})"
                code = f"({getter} := {choose})({key})"
            else:
                code = f"{getter}({key})"
        else:
            if holder is None:  # a value used once: a temporary holds it for the test and the lookup
                holder = self.temporary()
                head = f"_type({holder} := {target}) is _dict"
            elif (flag := self.dict_flags.get(target_chain)) is not None:
                head = flag
            else:  # the target is (now) in a local, and whether it is a dict will be too
                flag = self.dict_flags[target_chain] = self.temporary("_d")
                head = f"({flag} := _type({target}) is _dict)"
            if fallback == "_getitem" and type(node.arg.value) is int:  # the environment's getitem on a list
                index = node.arg.value
                if index in (0, -1):  # a list has them when it is not empty
                    in_range = holder
                else:
                    in_range = f"{index} < _len({holder})" if index >= 0 else f"{-index} <= _len({holder})"
                item = f"({holder}[{index}] if {in_range} else None)"
                if head.startswith("_type("):  # a value of its own, most likely a list: that is tested first
                    dict_or_other = f"({holder}.get({key}) if _type({holder}) is _dict else _getitem({holder}, {key}))"
                    code = f"({item} if {head[: -len(' is _dict')]} is _list else {dict_or_other})"
                else:
                    code = f"({holder}.get({key}) if {head} else ({item} if _type({holder}) is _list else "
                    code += f"_getitem({holder}, {key})))"
            else:
                code = f"({holder}.get({key}) if {head} else {fallback}({holder}, {key}))"
        if chain is None or self.uses.get(chain, 0) < 2:
            return code
        self.sites += 1
        if self.useful is not None and self.sites not in self.useful:  # never used again where it is bound
            return code
        name = self.bound[chain] = self.temporary("_v")
        self.site_of[name] = self.sites
        return f"({name} := {code})"

    def scope(self) -> tuple[dict[tuple[Any, ...], str], ...]:
        return dict(self.bound), dict(self.dict_flags), dict(self.getters)

    def restore(self, scope: tuple[dict[tuple[Any, ...], str], ...]) -> None:
        self.bound, self.dict_flags, self.getters = scope

    def conditional(self, node: nodes.Node) -> str:
        """`node` translated where Python may not evaluate it: what it binds is not reused after it."""
        scope = self.scope()
        try:
            return self.expression(node)
        finally:
            self.restore(scope)

    def visit_Slice(self, node: nodes.Slice) -> str:
        start = self.expression(node.start) if node.start is not None else ""
        stop = self.expression(node.stop) if node.stop is not None else ""
        step = f":{self.expression(node.step)}" if node.step is not None else ""
        return f"{start}:{stop}{step}"

    def visit_Tuple(self, node: nodes.Tuple) -> str:
        if node.ctx != "load":
            raise Unsupported("assignment", node.lineno)
        items = self.items(node.items)
        return f"({', '.join(items)},)" if len(items) == 1 else f"({', '.join(items)})"

    def visit_List(self, node: nodes.List) -> str:
        return f"[{', '.join(self.items(node.items))}]"

    def visit_Dict(self, node: nodes.Dict) -> str:
        pairs = [f"{self.expression(pair.key)}: {self.expression(pair.value)}" for pair in node.items]
        return f"{{{', '.join(pairs)}}}"

    def visit_CondExpr(self, node: nodes.CondExpr) -> str:
        test = self.expression(node.test)  # evaluated first, then one branch
        yes = self.conditional(node.expr1)
        if node.expr2 is not None:
            no = self.conditional(node.expr2)
        else:  # what Jinja gives for `a if b` when b is false
            hint = (
                f"the inline if-expression on line {int(node.lineno)} evaluated to false"
                " and no else section was defined."
            )
            no = f"_Undefined({hint!r})"
        return f"({yes} if {test} else {no})"

    def visit_And(self, node: nodes.And) -> str:
        return f"({self.expression(node.left)} and {self.conditional(node.right)})"

    def visit_Or(self, node: nodes.Or) -> str:
        return f"({self.expression(node.left)} or {self.conditional(node.right)})"

    def visit_Not(self, node: nodes.Not) -> str:
        if "not" in self.env.intercepted_unops:
            raise Unsupported("an intercepted operator", node.lineno)
        return f"(not {self.expression(node.node)})"

    def binary(self, node: nodes.BinExpr) -> str:
        operator = _BINARY[type(node)]
        if operator in self.env.intercepted_binops:
            raise Unsupported("an intercepted operator", node.lineno)
        return f"({self.expression(node.left)} {operator} {self.expression(node.right)})"

    visit_Add = visit_Sub = visit_Mul = visit_Div = visit_FloorDiv = visit_Mod = visit_Pow = binary

    def unary(self, node: nodes.UnaryExpr) -> str:
        operator = _UNARY[type(node)]
        if operator in self.env.intercepted_unops:
            raise Unsupported("an intercepted operator", node.lineno)
        return f"({operator}{self.expression(node.node)})"

    visit_Neg = visit_Pos = unary

    def visit_Compare(self, node: nodes.Compare) -> str:
        parts = [self.expression(node.expr)]
        for index, operand in enumerate(node.ops):
            operator = _COMPARISONS.get(operand.op)
            if operator is None:
                raise Unsupported(f"the comparison {operand.op!r}", node.lineno)
            # `a < b < c` evaluates c only when a < b
            value = self.expression(operand.expr) if index == 0 else self.conditional(operand.expr)
            parts.append(f"{operator} {value}")
        return f"({' '.join(parts)})"

    def visit_Concat(self, node: nodes.Concat) -> str:
        # Jinja's str_join: str() of each part once all are evaluated (None is 'None', a boolean 'True').
        return f"_str_join(({''.join(part + ', ' for part in self.items(node.nodes))}))"

    def visit_Filter(self, node: nodes.Filter) -> str:
        if node.node is None:
            raise Unsupported("a filter block", node.lineno)
        return self.call(node, self.env.filters.get(node.name), "filter", self.expression(node.node))

    def visit_Test(self, node: nodes.Test) -> str:
        function = self.env.tests.get(node.name)
        target = self.expression(node.node)
        plain = not node.args and not node.kwargs and node.dyn_args is None and node.dyn_kwargs is None
        if function is test_none and plain:  # Jinja's own tests, inlined
            return f"({target} is None)"
        if function is test_number and plain:  # isinstance(x, Number), the JSON types answered without the ABC
            holder, bind = self.holder(target)
            other = f"(_type({holder}) not in _NOT_NUMBERS and _isinstance({holder}, _Number))"
            return f"(_isinstance({bind}, _INT_FLOAT) or {other})"
        return self.call(node, function, "test", target)

    def visit_Call(self, node: nodes.Call) -> str:
        if not (isinstance(node.node, nodes.Name) and node.node.name == "stable_id"):
            raise Unsupported("calls other than stable_id(...)", node.lineno)
        # MappingEnvironment.call calls stable_id without the sandbox's checks: so does the compiled function.
        return f"{self.visit_Name(node.node)}({', '.join(self.arguments(node))})"

    def call(self, node: nodes.Filter | nodes.Test, function: Any, kind: str, target: str) -> str:
        if function is None:
            raise Unsupported(f"no {kind} named {node.name!r}", node.lineno)
        arguments = [target, *self.arguments(node)]
        passed = _passes(function)
        if passed == "context":
            self.needs_context = True
            arguments.insert(0, "context")
        elif passed == "eval_context":
            self.needs_eval_context = True
            arguments.insert(0, "eval_ctx")
        elif passed == "environment":
            arguments.insert(0, self.ref(self.env, "env"))
        elif passed is not None:
            raise Unsupported(f"a {kind} given {passed!r}", node.lineno)
        return f"{self.ref(function, kind)}({', '.join(arguments)})"

    def arguments(self, node: nodes.Call | nodes.Filter | nodes.Test) -> list[str]:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise Unsupported("*args or **kwargs in a call", node.lineno)
        arguments = self.items(node.args)
        for keyword_node in node.kwargs:
            key = keyword_node.key
            if not (isinstance(key, str) and _NAME.fullmatch(key)) or keyword.iskeyword(key):
                raise Unsupported(f"the keyword argument {key!r}", node.lineno)
            arguments.append(f"{key}={self.expression(keyword_node.value)}")
        return arguments


def _get_none(key: Any) -> None:
    return None


def _chain(node: nodes.Node, names: frozenset[str] = TEMPLATE_VARIABLES) -> tuple[Any, ...] | None:
    """('data', ('.', 'user'), ('.', 'id')) for data.user.id: lookups with constant keys from a template variable."""
    if isinstance(node, nodes.Name):
        return (node.name,) if node.ctx == "load" and node.name in names else None
    if isinstance(node, nodes.Getattr) and isinstance(node.attr, str) and not node.attr.startswith("_"):
        head = _chain(node.node, names)
        return None if head is None else (*head, (".", node.attr))
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and _literal(node.arg.value):
        value = node.arg.value
        if isinstance(value, str) and value.startswith("_"):
            return None
        head = _chain(node.node, names)  # 1, 1.0 and True are one dict key but not one list index: the type is kept
        return None if head is None else (*head, ("[]", type(value).__name__, repr(value)))
    return None


_JINJA_FUNCTIONS = frozenset(id(f) for f in (*jinja2.filters.FILTERS.values(), *jinja2.tests.TESTS.values()))


def _context_blind(env: MappingEnvironment) -> bool:
    """Whether every filter and test of `env` that is given a context is one of Jinja's own."""
    functions = (*env.filters.values(), *env.tests.values())
    return all(_passes(f) is None or id(getattr(f, "wraps_jinja", f)) in _JINJA_FUNCTIONS for f in functions)


def _passes(function: Any) -> str | None:
    """What Jinja passes a filter or test before its value: "context", "eval_context", "environment" or nothing.

    Read from the attribute Jinja's pass_context (and the others) set, as Jinja itself does.
    """
    passed = getattr(function, "jinja_pass_arg", None)
    return None if passed is None else str(getattr(passed, "name", passed))


def _context_factory(env: MappingEnvironment) -> Callable[[Mapping[str, Any]], Any]:
    """The Context Jinja's runtime would give a filter that asks for one (map, select, ...)."""
    template_globals = dict(env.make_globals(None))
    context_class = env.context_class

    def context(variables: Mapping[str, Any]) -> Any:
        return context_class(env, {**template_globals, **variables}, None, {})

    return context
