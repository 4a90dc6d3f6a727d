"""How good a room's air and quiet are: the one place the tile colours' thresholds live.

The pages colour tiles on the server with `level`, and hand them to the browser (as JSON on the
page's body) so the live script recolours with the very same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

Range = tuple[float | None, float | None]  # inclusive bounds; None: unbounded


@dataclass(frozen=True)
class Band:
    """A value inside `good` is good, inside `fair` fair, anything else poor."""

    label: str
    unit: str
    good: Range
    fair: Range


BANDS: dict[str, Band] = {
    # CO2: the thresholds French schools use (ICONE), ppm.
    "co2": Band("CO2", "ppm", good=(None, 800), fair=(None, 1500)),
    # Indoor temperature for seated activity: 19–25 °C comfortable, 17–27 °C tolerable.
    "temperature": Band("Temperature", "°C", good=(19, 25), fair=(17, 27)),
    # Noise, LAeq dB(A): a quiet working room, a busy one, then too loud to concentrate.
    "noise_laeq": Band("Noise", "dB(A)", good=(None, 55), fair=(None, 70)),
}
TILE_METRICS = tuple(BANDS)  # the metrics a room tile shows, in this order


def _inside(value: float, bounds: Range) -> bool:
    low, high = bounds
    return (low is None or value >= low) and (high is None or value <= high)


def level(metric: str, value: float | None) -> str:
    """good, fair, poor; `none` for no value, `plain` for a metric without thresholds."""
    if value is None:
        return "none"
    band = BANDS.get(metric)
    if band is None:
        return "plain"
    if _inside(value, band.good):
        return "good"
    return "fair" if _inside(value, band.fair) else "poor"


SEVERITY = ("none", "plain", "good", "fair", "poor")  # a tile takes its worst metric's level


def worst(levels: list[str]) -> str:
    return max(levels, key=SEVERITY.index, default="none")


def tile_level(values: dict[str, float]) -> str:
    """A room tile's colour: the worst level of its tile metrics."""
    return worst([level(m, values.get(m)) for m in TILE_METRICS])


def for_browser() -> dict:
    """The bands and the severity order, for the live script."""
    return {"bands": {name: asdict(band) for name, band in BANDS.items()}, "severity": SEVERITY}
