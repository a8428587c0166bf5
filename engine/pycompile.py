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

import keyword
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes
from jinja2.compiler import operators as _JINJA_OPERATORS
from jinja2.nodes import EvalContext
from jinja2.optimizer import Optimizer
from jinja2.runtime import Undefined, str_join
from jinja2.tests import test_none
from jinja2.utils import _PassArg

from engine.templating import TEMPLATE_VARIABLES, MappingEnvironment, compile_expression, stable_id


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


def compile_messages(env: MappingEnvironment, expr: nodes.Expr, roots: Sequence[nodes.Expr]) -> Program:
    """One function giving what `compile_expression(env, expr)` gives.

    `roots` are the template values inside `expr` (one per mapping value): a template with a node the compiler
    does not translate runs on Jinja as a whole, so that Jinja sees it as it would inside the whole expression.
    """
    writer = _Writer(env, {id(root): index for index, root in enumerate(roots)})
    try:
        body = writer.expression(expr)
    except Unsupported as problem:  # outside any template: not a mapping's shape; Jinja does all of it
        evaluate = compile_expression(env, expr)
        return Program(evaluate, "", [Fallback(-1, problem.lineno, problem.reason)])
    return writer.finish(body)


def compile_value(env: MappingEnvironment, expr: nodes.Expr) -> Callable[[Mapping[str, Any]], Any]:
    """One template value on its own (diagnostics evaluate templates one by one)."""
    return compile_messages(env, expr, [expr]).function


# ---------------------------------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_VARIABLE = re.compile(r"v_[a-z]+\Z")  # the function's locals for the template variables
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
    def __init__(self, env: MappingEnvironment, roots: dict[int, int]) -> None:
        if not isinstance(env, MappingEnvironment):
            raise TypeError("the compiler translates templates of a MappingEnvironment")
        self.env = env
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
        }
        self.by_object: dict[int, str] = {}
        self.variables: set[str] = set()
        self.needs_context = False
        self.needs_eval_context = False
        self.temporaries = 0
        self.fallbacks: list[Fallback] = []
        self.optimizer = Optimizer(env)
        self.eval_ctx = EvalContext(env)

    # -- the function

    def finish(self, body: str) -> Program:
        lines = ["def build(variables):"]
        for name in sorted(self.variables):
            lines.append(f"    v_{name} = variables[{name!r}] if {name!r} in variables else _undefined(name={name!r})")
        # What a filter may ask for, made per call as Jinja's runtime does, and only when one asks.
        if self.needs_context:
            lines.append("    context = _context(variables)")
            lines.append("    eval_ctx = context.eval_ctx")
        elif self.needs_eval_context:
            lines.append("    eval_ctx = _EvalContext(_env)")
        lines.append(f"    return {body}")
        source = "\n".join(lines) + "\n"
        namespace = dict(self.namespace)
        if self.needs_context:
            namespace["_context"] = _context_factory(self.env)
        elif self.needs_eval_context:  # a filter that reads only the evaluation context (list, join, ...)
            namespace.update(_EvalContext=EvalContext, _env=self.env)
        exec(compile(source, "<mapping>", "exec"), namespace)
        return Program(namespace["build"], source, self.fallbacks)

    def ref(self, obj: Any, prefix: str) -> str:
        """A name for `obj` in the function's namespace."""
        key = id(obj)
        name = self.by_object.get(key)
        if name is None:
            name = f"_{prefix}{len(self.by_object)}"
            self.by_object[key] = name
            self.namespace[name] = obj
        return name

    def temporary(self) -> str:
        self.temporaries += 1
        return f"_t{self.temporaries}"

    # -- expressions

    def expression(self, node: nodes.Node) -> str:
        index = self.roots.get(id(node))
        if index is None:
            return self.translate(node)
        optimized = self.optimizer.visit(node, self.eval_ctx)  # Jinja's own constant folding, as it compiles
        try:
            return self.translate(optimized)
        except Unsupported as problem:
            self.fallbacks.append(Fallback(index, problem.lineno, problem.reason))
            return f"{self.ref(compile_expression(self.env, node), 'jinja')}(variables)"

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
        if node.name in TEMPLATE_VARIABLES:
            self.variables.add(node.name)
            return f"v_{node.name}"
        if node.name == "stable_id" and self.env.globals.get("stable_id") is stable_id:
            return self.ref(stable_id, "helper")
        raise Unsupported(f"the name {node.name!r}", node.lineno)

    def visit_Getattr(self, node: nodes.Getattr) -> str:
        attribute = node.attr
        if not isinstance(attribute, str) or attribute.startswith("_"):
            raise Unsupported(f"access to {attribute!r}", node.lineno)
        return self.lookup(self.expression(node.node), repr(attribute), "_getattr")

    def visit_Getitem(self, node: nodes.Getitem) -> str:
        target = self.expression(node.node)
        if isinstance(node.arg, nodes.Slice):  # Jinja slices with Python's own subscript
            return f"{target}[{self.visit_Slice(node.arg)}]"
        if not isinstance(node.arg, nodes.Const):  # the key is evaluated after the target, as Jinja does
            return f"_getitem({target}, {self.expression(node.arg)})"
        if isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            raise Unsupported(f"access to {node.arg.value!r}", node.lineno)
        return self.lookup(target, self.visit_Const(node.arg), "_getitem")

    def lookup(self, target: str, key: str, fallback: str) -> str:
        """The environment's getattr or getitem of a constant key, with its dict case inlined (a dict's get)."""
        if _VARIABLE.fullmatch(target):
            holder, head = target, f"({target})"
        else:
            holder = self.temporary()
            head = f"({holder} := {target})"
        return f"({holder}.get({key}) if _type{head} is _dict else {fallback}({holder}, {key}))"

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
        yes = self.expression(node.expr1)
        test = self.expression(node.test)
        if node.expr2 is not None:
            no = self.expression(node.expr2)
        else:  # what Jinja gives for `a if b` when b is false
            hint = (
                f"the inline if-expression on line {int(node.lineno)} evaluated to false"
                " and no else section was defined."
            )
            no = f"_Undefined({hint!r})"
        return f"({yes} if {test} else {no})"

    def visit_And(self, node: nodes.And) -> str:
        return f"({self.expression(node.left)} and {self.expression(node.right)})"

    def visit_Or(self, node: nodes.Or) -> str:
        return f"({self.expression(node.left)} or {self.expression(node.right)})"

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
        for operand in node.ops:
            operator = _JINJA_OPERATORS.get(operand.op)
            if operator is None:
                raise Unsupported(f"the comparison {operand.op!r}", node.lineno)
            parts.append(f"{operator} {self.expression(operand.expr)}")
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
        if function is test_none and not node.args and not node.kwargs and not node.dyn_args and not node.dyn_kwargs:
            return f"({target} is None)"
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
        passed = _PassArg.from_obj(function)
        if passed is _PassArg.context:
            self.needs_context = True
            arguments.insert(0, "context")
        elif passed is _PassArg.eval_context:
            self.needs_eval_context = True
            arguments.insert(0, "eval_ctx")
        elif passed is _PassArg.environment:
            arguments.insert(0, self.ref(self.env, "env"))
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


def _context_factory(env: MappingEnvironment) -> Callable[[Mapping[str, Any]], Any]:
    """The Context Jinja's runtime would give a filter that asks for one (map, select, ...)."""
    template_globals = dict(env.make_globals(None))
    context_class = env.context_class

    def context(variables: Mapping[str, Any]) -> Any:
        return context_class(env, {**template_globals, **variables}, None, {})

    return context
