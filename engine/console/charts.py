"""Per-minute bar charts, drawn as SVG by the server: no chart library, no script."""

from __future__ import annotations

import time
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 72
GAP = 2


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # "18:03 UTC: 12"


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    total: int
    peak: int
    bars: list[Bar]
    width: int = WIDTH
    height: int = HEIGHT


def bar_chart(name: str, title: str, counts: list[int], start: float) -> Chart:
    """One bar a minute, the oldest on the left, scaled to the busiest minute."""
    peak = max(counts, default=0)
    slot = WIDTH / max(len(counts), 1)
    bars = []
    for minute, count in enumerate(counts):
        height = 0.0 if not peak else max(HEIGHT * count / peak, 1.5 if count else 0.0)
        clock = time.strftime("%H:%M", time.gmtime(start + 60 * minute))
        bars.append(Bar(minute * slot + GAP / 2, HEIGHT - height, slot - GAP, height, f"{clock} UTC: {count:,}"))
    return Chart(name, title, sum(counts), peak, bars)
