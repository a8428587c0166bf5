"""The JSON Schemas of schema/: mapping files, the Aircall webhook envelope, the Segment message."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator


def schema_dir() -> Path:
    """schema/ inside an installed wheel, or at the repository root for an editable install."""
    packaged = Path(__file__).parent / "schema"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "schema"


@cache
def load_schema(name: str) -> dict[str, Any]:
    return json.loads((schema_dir() / f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def validator(name: str, definition: str | None = None) -> Draft202012Validator:
    """A validator for a schema file, or for one of its $defs (sharing the file's other $defs)."""
    schema = load_schema(name)
    if definition is not None:
        schema = {**schema["$defs"][definition], "$defs": schema["$defs"]}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def mapping_file_validator() -> Draft202012Validator:
    return validator("mapping")


def resolved_mapping_validator() -> Draft202012Validator:
    return validator("mapping", "resolved")


def webhook_validator() -> Draft202012Validator:
    return validator("aircall-webhook")


def segment_message_validator() -> Draft202012Validator:
    return validator("segment-message")
