"""Geometry for the dashboard's inline SVG charts: numbers in, coordinates out.

Why by hand rather than a chart library: the charts are bars and one line, a few dozen lines of
arithmetic; a JavaScript library would need vendoring, a build or a CDN, and would draw nothing
for a browser (or a test) without scripts. The templates only place what is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: Heat-map levels (CSS classes ``heat-0`` … ``heat-5``): 0 is an empty cell.
HEAT_LEVELS = 5


def heat_level(count: int, largest: int) -> int:
    if count <= 0 or largest <= 0:
        return 0
    return max(1, min(HEAT_LEVELS, round(HEAT_LEVELS * count / largest)))


def share(count: int, largest: int) -> float:
    """Width of a bar in percent of the longest one."""
    return round(100.0 * count / largest, 2) if largest > 0 else 0.0


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int


def day_bars(
    values: list[tuple[str, int]], width: float = 600, height: float = 120
) -> tuple[list[Bar], int]:
    """One bar per day, scaled to the busiest day; returns the bars and that day's count."""
    largest = max((value for _, value in values), default=0)
    if not values:
        return [], 0
    step = width / len(values)
    bars = []
    for index, (label, value) in enumerate(values):
        h = height * value / largest if largest else 0.0
        bars.append(
            Bar(
                x=round(index * step, 2),
                y=round(height - h, 2),
                width=round(max(step * 0.8, 0.5), 2),
                height=round(h, 2),
                label=label,
                value=value,
            )
        )
    return bars, largest


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    at: datetime
    score: int


@dataclass(frozen=True)
class LineChart:
    points: list[Point]
    width: float
    height: float
    top: int
    #: ``x,y x,y ...`` for an SVG polyline (steps: the score holds until the next change).
    polyline: str
    #: Horizontal grid lines: (y, label).
    grid: list[tuple[float, int]]


def score_line(
    samples: list[tuple[datetime, int]],
    width: float = 640,
    height: float = 200,
    pad: float = 30,
) -> LineChart:
    """The score as a step line over event time (samples sorted by time here)."""
    ordered = sorted(samples, key=lambda item: item[0])
    top = max([100, *[score for _, score in ordered]])
    bottom = min([0, *[score for _, score in ordered]])
    span_y = (top - bottom) or 1
    if ordered:
        first, last = ordered[0][0], ordered[-1][0]
        span_x = (last - first).total_seconds() or 1.0
    inner_w, inner_h = width - 2 * pad, height - 2 * pad

    def y_of(score: float) -> float:
        return round(pad + inner_h * (top - score) / span_y, 2)

    points = []
    for at, score in ordered:
        offset = (at - ordered[0][0]).total_seconds() / span_x if len(ordered) > 1 else 0.5
        points.append(Point(x=round(pad + inner_w * offset, 2), y=y_of(score), at=at, score=score))
    coords: list[str] = []
    for index, point in enumerate(points):
        if index:
            coords.append(f"{point.x},{points[index - 1].y}")
        coords.append(f"{point.x},{point.y}")
    grid = [(y_of(value), value) for value in range(bottom, top + 1, 25) if value % 25 == 0]
    return LineChart(
        points=points,
        width=width,
        height=height,
        top=top,
        polyline=" ".join(coords),
        grid=grid,
    )
