"""YAML loading that remembers where every value stands, so errors can name the line.

PyYAML's composer keeps a start mark on every node; we construct the plain value with the safe loader and, from
the same node tree, a table from each value's path (keys and list indices) to its position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from engine.mapping.findings import NOT_A_SEGMENT_NUMBER

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Spot:
    line: int  # 1-based, of the value
    column: int  # 1-based, of the value
    key_line: int  # of the key naming it (same as the value's for list items and the root)
    key_column: int
    style: str | None  # the scalar's style: None (plain), "'", '"', "|", ">"


class YamlError(Exception):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


class _Loader(yaml.SafeLoader):
    """The safe loader, without anchors and aliases.

    An alias shares a node, cheaply; but every walk of the document afterwards (positions, `extends` merging,
    rendering) expands it, and a few nested anchors expand to millions of values: seconds of CPU and hundreds
    of MB before any check could refuse them. Mappings share values with `extends` instead.
    Nesting is bounded too: the composer recurses, and a few thousand '[' were a RecursionError.
    """

    MAX_DEPTH = 64  # a mapping is a handful of levels deep

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YamlError(
                "YAML anchors and aliases (&name, *name) are not allowed; share values with extends",
                mark.line + 1,
                mark.column + 1,
            )
        if self.depth >= self.MAX_DEPTH:
            raise YamlError(f"YAML nested deeper than {self.MAX_DEPTH} levels", mark.line + 1, mark.column + 1)
        self.depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self.depth -= 1


def load(text: str) -> tuple[Any, dict[Path_, Spot]]:
    """The document's value and the position of every value in it. Raises YamlError."""
    try:
        loader = _Loader(text)  # its reader refuses control characters (NUL, DEL, ...) here, before any parse
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlError(f"a character YAML does not allow in a file: U+{code:04X}; remove it", line, column) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        spots: dict[Path_, Spot] = {}
        _walk(node, (), node.start_mark, spots)
        value = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlError(f"YAML syntax error: {problem}", line, column) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"YAML error: {exc}", 1, 1) from None
    finally:
        loader.dispose()
    return value, spots


_STR, _INT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int"
_MAX_INT_DIGITS = 309  # anything longer is beyond a double's range (in hexadecimal or octal, even more so)


def _digits(written: str) -> str:
    """An integer as YAML 1.1 writes it (1_000, -0017, 0x1F), without what does not count towards its size."""
    return written.replace("_", "").lstrip("+-").lstrip("0")


def _walk(node: yaml.Node, path: Path_, key_mark: yaml.Mark, spots: dict[Path_, Spot]) -> None:
    mark = node.start_mark
    style = node.style if isinstance(node, yaml.ScalarNode) else None
    spots[path] = Spot(mark.line + 1, mark.column + 1, key_mark.line + 1, key_mark.column + 1, style)
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT and len(_digits(node.value)) > _MAX_INT_DIGITS:
        # Python refuses to read integers past 4,300 digits (a ValueError, not a YAML error); past 309 they are
        # beyond a double's range, which Segment and warehouses read numbers as.
        raise YamlError(NOT_A_SEGMENT_NUMBER, mark.line + 1, mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR):
                written = key_node.value if isinstance(key_node, yaml.ScalarNode) else "this"
                at = key_node.start_mark  # a key read as a number, true/false or null is not a name
                raise YamlError(
                    f"a key must be text: {written!r} is read as something else; put it in quotes",
                    at.line + 1,
                    at.column + 1,
                )
            key = key_node.value
            if key in seen:
                # PyYAML keeps the last of two equal keys without a word; in a mapping that hides an edit.
                first = seen[key]
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r} (first at line {first.line + 1})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark
            _walk(value_node, (*path, key), key_node.start_mark, spots)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), item.start_mark, spots)
