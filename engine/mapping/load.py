"""Loading the mappings folder: YAML with positions, the schema, `extends`, and one compiled callable per event.

`load_mappings` is the single way in, for `engine validate`, `engine render` and the server alike, so that what
validate accepts is exactly what runs. Every problem becomes a Finding that names the file, the line and why;
loading goes on past a bad file so that one run reports them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import nodes
from jinja2.runtime import Undefined
from jsonschema import ValidationError

from engine.aircall.envelope import Webhook
from engine.aircall.events import is_event_name
from engine.mapping import yamlsource
from engine.mapping.compiler import Fallback, compile_messages, compile_value
from engine.mapping.findings import Finding, MappingError, MappingsFolderError, caret_excerpt
from engine.mapping.message import Encoded, RenderError, encode, finish
from engine.mapping.templating import (
    EACH_VARIABLES,
    TEMPLATE_VARIABLES,
    MappingEnvironment,
    TemplateProblem,
    compile_expression,
    dict_node,
    parse_value,
)
from engine.schemas import mapping_file_validator, resolved_mapping_validator

# Keys of a message spec that hold templates, in the order messages are built.
_TEMPLATE_KEYS = ("event", "userId", "anonymousId", "groupId")
_FIELD_KEYS = ("properties", "traits")


@dataclass(frozen=True)
class Origin:
    """Where a value of a merged mapping was written: the file (an event file or one of its bases) and spot."""

    source: SourceFile
    spot: yamlsource.Spot


@dataclass
class SourceFile:
    path: Path
    lines: list[str]
    document: dict[str, Any]
    spots: dict[yamlsource.Path_, yamlsource.Spot]

    def origin(self, path: yamlsource.Path_) -> Origin:
        """The spot of the nearest written ancestor of `path` (a missing key points at its parent)."""
        while path not in self.spots and path:
            path = path[:-1]
        return Origin(self, self.spots.get(path) or yamlsource.Spot(1, 1, 1, 1, None))


@dataclass(frozen=True)
class TemplateField:
    """One template of a compiled mapping, kept to point at its line when it fails on some payload."""

    path: yamlsource.Path_  # e.g. ("segment", "properties", "duration")
    origin: Origin
    node: nodes.Expr
    each: int | None = None  # in a message with `each`: that message's position (it reads `item` and `index`)


# A webhook whose `each` lists give more messages than this is a dead letter, not thousands of messages: a
# transcript of an hour, one message per utterance, is about a thousand.
MAX_MESSAGES = 10_000


@dataclass(frozen=True)
class Expander:
    """A message with `each`: its list, and the message for one element of it."""

    position: int  # among the mapping's messages: 0 for `segment`, 1 + i for also[i]
    items: Callable[[Mapping[str, Any]], Any]
    message: Callable[[Mapping[str, Any]], dict[str, Any]]

    def specs(self, variables: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        items = self.items(variables)
        if items is None or isinstance(items, Undefined):
            return []  # a list the webhook does not carry: nothing to send
        if not isinstance(items, (list, tuple)):
            where = "segment" if self.position == 0 else f"also[{self.position - 1}]"
            raise RenderError(f"{where}.each rendered a {type(items).__name__}, not a list")
        if len(items) > MAX_MESSAGES:
            raise RenderError(f"each gave {len(items):,} elements; a webhook makes at most {MAX_MESSAGES:,} messages")
        # The id of element i of message p is p.i: the ids of a mapping's other messages do not move.
        return [
            (f"{self.position}.{index}", self.message({**variables, "item": item, "index": index}))
            for index, item in enumerate(items)
        ]

    def variables_of_items(self, variables: Mapping[str, Any]) -> list[dict[str, Any]]:
        """What the message's templates read for each element (diagnostics)."""
        try:
            items = self.items(variables)
        except Exception:
            return []
        if not isinstance(items, (list, tuple)):
            return []
        return [{**variables, "item": item, "index": index} for index, item in enumerate(items)]


@dataclass(frozen=True)
class Fetch:
    """A resource of Aircall's REST API that processing reads before the messages are made (`fetch` in the file)."""

    name: str  # the templates read the answer as fetched.<name>
    path: Callable[[Mapping[str, Any]], Any]
    when: Callable[[Mapping[str, Any]], Any] | None  # None: always


@dataclass
class CompiledMapping:
    event: str
    path: Path
    fields: tuple[TemplateField, ...]
    _build: Callable[[Mapping[str, Any]], list[dict[str, Any]]]
    _env: MappingEnvironment = field(repr=False)
    # The templates that run on Jinja's runtime (engine.mapping.compiler does not translate them), and why.
    on_jinja: tuple[tuple[TemplateField, Fallback], ...] = ()
    _compile_value: Callable[..., Callable[[Mapping[str, Any]], Any]] = field(default=compile_value, repr=False)
    _build_webhook: Callable[[Webhook], list[dict[str, Any]]] | None = field(default=None, repr=False)
    # Messages with `each`; then `_build` gives the others, whose positions are `_positions`.
    expanders: tuple[Expander, ...] = ()
    _positions: tuple[int, ...] = ()
    # The file merged over its bases, as compiled: what engine.mapping.reference describes.
    document: dict[str, Any] = field(default_factory=dict, repr=False)
    fetches: tuple[Fetch, ...] = ()

    def render(self, webhook: Webhook) -> list[dict[str, Any]]:
        """The Segment messages for one webhook. Raises RenderError, never anything else."""
        try:
            raw = self._build_webhook(webhook) if self._build_webhook else self._build(webhook.template_variables())
            if self.expanders:
                return self._render_expanded(webhook, raw)
        except RenderError as exc:
            raise RenderError(f"{self.path.name}: {exc}") from None
        except Exception as exc:  # a template may raise anything its expression can (TypeError, SecurityError...)
            raise RenderError(f"{self.path.name}: {type(exc).__name__}: {exc}") from None
        try:
            if len(raw) == 1:  # most mappings send one message: no comprehension for it
                return [finish(raw[0], 0, webhook)]
            return [finish(spec, index, webhook) for index, spec in enumerate(raw)]
        except RenderError as exc:
            raise RenderError(f"{self.path.name}: {exc}") from None

    def _render_expanded(self, webhook: Webhook, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages in the order they are written, each message with `each` once per element."""
        variables = webhook.template_variables()
        specs: list[tuple[int | str, dict[str, Any]]] = []
        plain = dict(zip(self._positions, raw, strict=True))
        expanders = {expander.position: expander for expander in self.expanders}
        for position in range(len(plain) + len(expanders)):
            if position in plain:
                specs.append((position, plain[position]))
            else:
                specs.extend(expanders[position].specs(variables))
                if len(specs) > MAX_MESSAGES:
                    raise RenderError(f"each gave more than {MAX_MESSAGES:,} messages for one webhook")
        return [finish(spec, key, webhook) for key, spec in specs]

    def render_json(self, webhook: Webhook) -> list[Encoded]:
        """The messages encoded as Segment receives them, each checked to be JSON and within 32 KB."""
        try:
            return [Encoded(message["messageId"], encode(message)) for message in self.render(webhook)]
        except RenderError as exc:
            text = str(exc)
            raise RenderError(text if text.startswith(self.path.name) else f"{self.path.name}: {text}") from None

    def failing_fields(self, webhook: Webhook) -> Iterator[tuple[TemplateField, Exception, int]]:
        """Each template that raises for this webhook, evaluated on its own, with the template line that raised.

        Slow (it compiles each template again): for diagnostics only.
        """
        variables = webhook.template_variables()
        expanders = {expander.position: expander for expander in self.expanders}
        for template in self.fields:
            node = template.node
            # A text template fails in one of its {{ }} parts; trying each part names the line.
            parts = (
                [p for p in node.nodes if not isinstance(p, nodes.Const)] if isinstance(node, nodes.Concat) else [node]
            )
            each = template.each
            tried = [variables] if each is None else expanders[each].variables_of_items(variables)
            names = TEMPLATE_VARIABLES if each is None else EACH_VARIABLES
            found = False
            for part in parts:
                function = self._compile_value(self._env, part, names)
                for values in tried:
                    try:
                        result = function(values)
                        if isinstance(result, Iterator):  # map(...) runs its filter only when encoded
                            list(result)
                    except Exception as exc:
                        yield template, exc, part.lineno or 1
                        found = True
                        break
                if found:
                    break


@dataclass
class Mappings:
    directory: Path
    by_event: dict[str, CompiledMapping]
    # Every event some file names, compiled or not: a broken file is reported once, not also as missing.
    claimed: frozenset[str] = frozenset()

    def get(self, event: str) -> CompiledMapping | None:
        return self.by_event.get(event)

    def __len__(self) -> int:
        return len(self.by_event)


class UnknownEvent(LookupError):
    """No mapping for this event: Aircall added an event, or the operator removed the file."""


def load_mappings(directory: Path, runtime: str = "python") -> Mappings:
    """Load and compile every mapping in `directory`; raise MappingError listing every finding.

    `runtime`: "python" (the default) compiles each mapping to one Python function (engine.mapping.compiler); "jinja"
    runs it on Jinja's runtime, which the compiled functions are tested against.
    """
    mappings, findings = inspect_mappings(directory, runtime)
    if findings:
        raise MappingError(findings)
    return mappings


def inspect_mappings(directory: Path, runtime: str = "python") -> tuple[Mappings, list[Finding]]:
    """Compile what can be compiled in the folder, and every finding on the way."""
    directory = Path(directory)
    texts: dict[str, bytes | OSError] = {}
    for path in mapping_files(directory):
        try:
            texts[path.name] = path.read_bytes()
        except OSError as exc:
            texts[path.name] = exc
    return inspect_texts(directory, texts, runtime)


def load_texts(directory: Path, texts: Mapping[str, bytes], runtime: str = "python") -> Mappings:
    """load_mappings of files given by name and content (what the server read at start-up, handed to the
    processing process): no folder is read, and none is written."""
    mappings, findings = inspect_texts(directory, texts, runtime)
    if findings:
        raise MappingError(findings)
    return mappings


def inspect_texts(
    directory: Path, texts: Mapping[str, bytes | OSError], runtime: str = "python"
) -> tuple[Mappings, list[Finding]]:
    """Compile the files `texts` names (file name: its bytes, or why it could not be read), as the files of
    `directory`, which is what findings name."""
    if runtime not in ("python", "jinja"):
        raise ValueError(f"runtime must be 'python' or 'jinja', not {runtime!r}")
    directory = Path(directory)
    findings: list[Finding] = []
    sources: dict[str, SourceFile] = {}
    claimed: set[str] = set()
    for name in sorted(texts):
        source = _read(directory / name, texts[name], findings, claimed)
        if source is not None:
            sources[name] = source
    env = MappingEnvironment()
    compiled: dict[str, CompiledMapping] = {}
    for name, source in sources.items():
        is_base = name.startswith("_")
        event = source.document.get("aircall_event")
        if is_base:
            if event is not None:
                findings.append(
                    _at(
                        source,
                        ("aircall_event",),
                        "a base file (named _*.yaml) maps no event; rename the file without the leading underscore",
                        key=True,
                    )
                )
            continue
        if event is None:
            findings.append(_at(source, (), "missing 'aircall_event': which Aircall event does this file map?"))
            continue
        if not is_event_name(event):  # the schema's `$` lets a final newline through (`aircall_event: |`)
            findings.append(
                _at(source, ("aircall_event",), f"aircall_event: {event!r} is not an event name (like call.ended)")
            )
            continue
        merged = _resolve(source, sources, findings)
        if merged is None:
            continue
        document, origins = merged
        if not _check_resolved(source, document, origins, findings):
            continue
        if event in compiled:
            findings.append(
                _at(source, ("aircall_event",), f"event {event!r} is already mapped by {compiled[event].path.name}")
            )
            continue
        mapping = _compile(env, source, document, origins, findings, runtime)
        if mapping is not None:
            compiled[event] = mapping
    unique = list(dict.fromkeys(findings))  # a base's problem shows once, not once per file extending it
    return Mappings(directory, compiled, frozenset(claimed)), unique


def mapping_files(directory: Path) -> list[Path]:
    """The YAML files of the folder; MappingsFolderError when the folder cannot be listed."""
    if not directory.exists():
        raise MappingsFolderError(f"{directory}: mappings folder not found")
    if not directory.is_dir():
        raise MappingsFolderError(f"{directory}: not a folder")
    try:
        names = [entry.name for entry in os.scandir(directory)]
    except OSError as exc:
        raise MappingsFolderError(f"{directory}: cannot read the mappings folder: {exc.strerror}") from None
    return sorted(directory / n for n in names if n.endswith((".yaml", ".yml")) and not n.startswith("."))


def _read(path: Path, content: bytes | OSError, findings: list[Finding], claimed: set[str]) -> SourceFile | None:
    try:
        if isinstance(content, OSError):
            raise content
        text = content.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        findings.append(Finding(path, 1, 1, f"cannot read file: {exc}"))
        return None
    lines = text.splitlines()
    try:
        document, spots = yamlsource.load(text)
    except yamlsource.YamlError as exc:
        if not path.name.startswith("_"):
            claimed.add(path.stem)  # unreadable, but by its name it means to map this event: no 'missing' too
        excerpt = caret_excerpt(lines[exc.line - 1], exc.column) if 0 < exc.line <= len(lines) else ""
        findings.append(Finding(path, exc.line, exc.column, exc.message, excerpt))
        return None
    if not isinstance(document, dict):
        findings.append(
            Finding(path, 1, 1, f"a mapping file must be a YAML mapping (key: value), not {type(document).__name__}")
        )
        return None
    if isinstance(document.get("aircall_event"), str) and not path.name.startswith("_"):
        claimed.add(document["aircall_event"])
    source = SourceFile(path, lines, document, spots)
    errors = sorted(mapping_file_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    for error in errors:
        findings.append(_schema_finding(source, error))
    return None if errors else source


def _schema_finding(source: SourceFile, error: ValidationError) -> Finding:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            hint = f"; allowed here: {', '.join(sorted(allowed))}" if allowed else ""
            return _at(source, (*path, extra[0]), f"unknown key {extra[0]!r}{hint}", key=True)
    where = ".".join(str(p) for p in path)
    return _at(source, path, f"{where}: {_shortened(error)}" if where else _shortened(error))


def _shortened(error: ValidationError) -> str:
    """jsonschema's message, the value it quotes cut short and its reason kept ('... is too long')."""
    message = error.message
    quoted = repr(error.instance)
    if len(quoted) > 80 and message.startswith(quoted):
        message = quoted[:60] + "…" + quoted[-1:] + message[len(quoted) :]
    return message if len(message) < 200 else message[:100] + " … " + message[-96:]


def _at(source: SourceFile, path: yamlsource.Path_, message: str, key: bool = False) -> Finding:
    spot = source.origin(path).spot
    line, column = (spot.key_line, spot.key_column) if key else (spot.line, spot.column)
    excerpt = caret_excerpt(source.lines[line - 1], column) if 0 < line <= len(source.lines) else ""
    return Finding(source.path, line, column, message, excerpt)


# ---------------------------------------------------------------------------------------------------------------
# extends


def _resolve(
    source: SourceFile, sources: dict[str, SourceFile], findings: list[Finding]
) -> tuple[dict[str, Any], dict[yamlsource.Path_, Origin]] | None:
    """The event file merged over its chain of bases, with the origin of every value."""
    chain = [source]
    current = source
    while (base_name := current.document.get("extends")) is not None:
        base = sources.get(base_name)
        if base is None:
            exists = (source.path.parent / base_name).exists()
            reason = "is not a valid mapping file (see its own errors)" if exists else "not found"
            findings.append(_at(current, ("extends",), f"base {base_name!r} {reason}"))
            return None
        if base in chain:
            cycle = " -> ".join(s.path.name for s in [*chain, base])
            findings.append(_at(current, ("extends",), f"extends cycle: {cycle}"))
            return None
        chain.append(base)
        current = base
    document: dict[str, Any] = {}
    origins: dict[yamlsource.Path_, Origin] = {}
    for layer in reversed(chain):  # the most basic first, so that each file overrides what it extends
        _merge_into(document, layer.document, (), layer, origins)
    document.pop("extends", None)
    return document, origins


def _merge_into(
    target: dict[str, Any],
    layer: dict[str, Any],
    path: yamlsource.Path_,
    source: SourceFile,
    origins: dict[yamlsource.Path_, Origin],
) -> None:
    for key, value in layer.items():
        here = (*path, key)
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value, here, source, origins)
        else:
            target[key] = _copy(value)
            for spot_path in source.spots:
                if spot_path[: len(here)] == here:
                    origins[spot_path] = Origin(source, source.spots[spot_path])
        origins.setdefault(here, Origin(source, source.spots[here]))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _origin_of(origins: dict[yamlsource.Path_, Origin], path: yamlsource.Path_, fallback: SourceFile) -> Origin:
    while path and path not in origins:
        path = path[:-1]
    return origins.get(path) or fallback.origin(())


def _check_resolved(
    source: SourceFile, document: dict[str, Any], origins: dict[yamlsource.Path_, Origin], findings: list[Finding]
) -> bool:
    errors = list(resolved_mapping_validator().iter_errors(document))
    for error in errors:
        path = tuple(error.absolute_path)
        origin = _origin_of(origins, path, source)
        where = ".".join(str(p) for p in path) or "mapping"
        spot = origin.spot
        message = f"{where}: {_plain_requirement(error)}"
        if origin.source is not source:
            message += f" (after merging {origin.source.path.name})"
        excerpt = caret_excerpt(origin.source.lines[spot.line - 1], spot.column) if origin.source.lines else ""
        findings.append(Finding(origin.source.path, spot.line, spot.column, message, excerpt))
    return not errors


def _plain_requirement(error: ValidationError) -> str:
    if error.validator == "not":
        return "has a key its type does not allow (track takes event and properties; identify and group take traits)"
    return error.message


# ---------------------------------------------------------------------------------------------------------------
# compiling


def _compile(
    env: MappingEnvironment,
    source: SourceFile,
    document: dict[str, Any],
    origins: dict[yamlsource.Path_, Origin],
    findings: list[Finding],
    runtime: str = "python",
) -> CompiledMapping | None:
    specs: list[tuple[yamlsource.Path_, dict[str, Any]]] = [(("segment",), document["segment"])]
    specs += [(("also", i), spec) for i, spec in enumerate(document.get("also") or [])]
    fields: list[TemplateField] = []
    failed = False

    def parse(value: Any, at: yamlsource.Path_, each: int | None = None) -> nodes.Expr:
        nonlocal failed
        origin = _origin_of(origins, at, source)
        try:
            node = parse_value(env, value, TEMPLATE_VARIABLES if each is None else EACH_VARIABLES)
        except TemplateProblem as problem:
            failed = True
            findings.append(_template_finding(origin, problem))
            return nodes.Const(None)
        fields.append(TemplateField(at, origin, node, each))
        return node

    def parse_fields(values: dict[str, Any], at: yamlsource.Path_, each: int | None) -> nodes.Dict:
        return dict_node(
            (key, parse_fields(value, (*at, key), each) if isinstance(value, dict) else parse(value, (*at, key), each))
            for key, value in values.items()
        )

    def message_node(at: yamlsource.Path_, spec: dict[str, Any], each: int | None) -> nodes.Dict:
        items: list[tuple[str, nodes.Expr]] = [("type", nodes.Const(spec["type"]))]
        items += [(key, parse(spec[key], (*at, key), each)) for key in _TEMPLATE_KEYS if key in spec]
        items += [(key, parse_fields(spec[key], (*at, key), each)) for key in _FIELD_KEYS if key in spec]
        return dict_node(items)

    fetch_nodes = [
        (
            name,
            parse(spec["path"], ("fetch", name, "path")),
            parse(spec["when"], ("fetch", name, "when")) if "when" in spec else None,
        )
        for name, spec in (document.get("fetch") or {}).items()
    ]
    plain: list[tuple[int, nodes.Dict]] = []
    expanding: list[tuple[int, nodes.Expr, nodes.Dict]] = []
    for position, (at, spec) in enumerate(specs):
        if "each" in spec:
            items = parse(spec["each"], (*at, "each"))
            expanding.append((position, items, message_node(at, spec, position)))
        else:
            plain.append((position, message_node(at, spec, None)))
    if failed:
        return None
    event, path = document["aircall_event"], source.path
    plain_nodes = nodes.List([node for _, node in plain])
    plain_fields = [f for f in fields if f.each is None and f.path[-1:] != ("each",) and f.path[0] != "fetch"]
    if runtime == "jinja":
        fetches = tuple(
            Fetch(name, compile_expression(env, path), None if when is None else compile_expression(env, when))
            for name, path, when in fetch_nodes
        )
        expanders = tuple(
            Expander(position, compile_expression(env, items), compile_expression(env, message))
            for position, items, message in expanding
        )
        return CompiledMapping(
            event=event,
            path=path,
            fields=tuple(fields),
            _build=compile_expression(env, plain_nodes),
            _env=env,
            _compile_value=_on_jinja,
            expanders=expanders,
            _positions=tuple(position for position, _ in plain),
            document=document,
            fetches=fetches,
        )
    program = compile_messages(env, plain_nodes, [f.node for f in plain_fields])
    fetches = tuple(
        Fetch(
            name,
            compile_messages(env, path, [path]).function,
            None if when is None else compile_messages(env, when, [when]).function,
        )
        for name, path, when in fetch_nodes
    )
    on_jinja = [(plain_fields[f.index], f) for f in program.fallbacks if f.index >= 0]
    compiled_expanders = []
    for position, items, message in expanding:
        each_field = next(f for f in fields if f.node is items)
        items_program = compile_messages(env, items, [items])
        message_fields = [f for f in fields if f.each == position]
        message_program = compile_messages(env, message, [f.node for f in message_fields], EACH_VARIABLES)
        on_jinja += [(each_field, f) for f in items_program.fallbacks if f.index >= 0]
        on_jinja += [(message_fields[f.index], f) for f in message_program.fallbacks if f.index >= 0]
        compiled_expanders.append(Expander(position, items_program.function, message_program.function))
    return CompiledMapping(
        event=event,
        path=path,
        fields=tuple(fields),
        _build=program.function,
        _env=env,
        on_jinja=tuple(on_jinja),
        _build_webhook=program.of_webhook,
        expanders=tuple(compiled_expanders),
        _positions=tuple(position for position, _ in plain),
        document=document,
        fetches=fetches,
    )


def _on_jinja(
    env: MappingEnvironment, expr: nodes.Expr, names: frozenset[str] = TEMPLATE_VARIABLES
) -> Callable[[Mapping[str, Any]], Any]:
    return compile_expression(env, expr)


def template_position(origin: Origin, template_line: int) -> tuple[int, int]:
    """The file line and column of line `template_line` of the template written at `origin`."""
    spot = origin.spot
    if spot.style in ("|", ">"):  # a block scalar's text starts on the line after its indicator
        line = spot.line + template_line
        text = origin.source.lines[line - 1] if line <= len(origin.source.lines) else ""
        return line, len(text) - len(text.lstrip()) + 1
    line = spot.line + template_line - 1
    return line, spot.column if template_line == 1 else 1


def field_finding(origin: Origin, message: str, template_line: int = 1) -> Finding:
    line, column = template_position(origin, template_line)
    lines = origin.source.lines
    excerpt = caret_excerpt(lines[line - 1], column) if 0 < line <= len(lines) else ""
    return Finding(origin.source.path, line, column, message, excerpt)


def _template_finding(origin: Origin, problem: TemplateProblem) -> Finding:
    return field_finding(origin, problem.message, problem.line)
