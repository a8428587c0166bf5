"""Phone digits as settings and warehouses want them. One normaliser, so that AIRCALL_NUMBERS and the `e164`
filter always agree on what a number is."""

from __future__ import annotations

import re

# ASCII only: str.isdigit() and the \d of `re` also accept '²' or '٣', which phone numbers never hold and
# int() either refuses ('²') or reads as another digit ('٣' is 3).
_NOT_DIGITS = re.compile(r"[^0-9]")


def normalize_digits(text: str) -> str:
    """'+33 1 76-36 06 95' -> '+33176360695'; '' when there is no digit."""
    digits = _NOT_DIGITS.sub("", text)
    return ("+" + digits) if digits and text.lstrip().startswith("+") else digits


def ascii_digits(text: str) -> bool:
    """Whether `text` is one or more of 0-9 and nothing else: what int() reads as the number it looks like."""
    return text.isascii() and text.isdigit()
