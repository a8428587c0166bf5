"""A problem found in a mapping file, told the way compilers tell it: FILE:LINE:COL: message."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int  # 1-based; 0 for what is about the folder, not a line of a file
    column: int  # 1-based
    message: str
    excerpt: str = ""  # the offending source line(s) with a caret under the spot, when there is one

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}" if self.line else str(self.path)
        head = f"{where}: {self.message}"
        return f"{head}\n{self.excerpt}" if self.excerpt else head

    def as_dict(self) -> dict[str, object]:
        return {"file": str(self.path), "line": self.line, "column": self.column, "message": self.message}


# Said of a number no double holds, wherever it is found (the YAML as read, a template's constants).
NOT_A_SEGMENT_NUMBER = (
    "a number beyond a double's range (or NaN): Segment takes finite numbers only; write a smaller one, or a string"
)


def caret_excerpt(source_line: str, column: int, indent: str = "    ") -> str:
    """The line as written, and a caret under `column` (1-based)."""
    line = source_line.rstrip("\n").expandtabs(1)
    return f"{indent}{line}\n{indent}{' ' * max(column - 1, 0)}^"


class MappingError(Exception):
    """Mappings that cannot be used; carries every finding so one run reports them all."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        super().__init__("\n".join(str(f) for f in findings))


class MappingsFolderError(Exception):
    """The mappings folder itself cannot be used (missing, not a folder, unreadable): a usage error, not a
    list of findings about files that are not there."""
