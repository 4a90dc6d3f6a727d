"""The published formulas building insight applies: pure functions, no database.

ICONE, the confinement index of French schools
    Ribéron J., Ramalho O., Derbez M., Berthineau B., Kirchner S. (CSTB/OQAI, 2007; "Indice de
    confinement de l'air intérieur : des écoles aux logements", Pollution atmosphérique n° 228, 2016);
    made the regulatory index of the indoor-air monitoring of schools and nurseries by décret
    n° 2012-14 (as amended by décret n° 2015-1926, art. 8: "1 point toutes les dix minutes") and
    described in CSTB's protocol SC-QEI-2022-230 (Ramalho & Rueda Lopez, March 2023):

        ICONE = 2.5 / log10(2) · log10(1 + f1 + 3·f2)      (= 2.5 · log2(1 + f1 + 3·f2))

    over the CO2 values at a **10-minute step** taken while pupils are present: f1 is the share of
    values in ]1000, 1700] ppm, f2 the share above 1700 ppm. It runs from 0 (every value ≤ 1000 ppm)
    to 5 (every value > 1700 ppm) and is read rounded to the nearest integer, on the scale
    0 nul, 1 faible, 2 moyen, 3 élevé, 4 très élevé, 5 extrême (none, low, average, high, very high,
    extreme). We compute 2.5·log2(…), which is the same number and exact where the log is whole
    (f1 = 1 gives 2.5, f2 = 1 gives 5), and round halves up (2.5 → 3), as the French convention does.

EN 16798-1:2019 comfort categories (Annex B default values)
    - CO2 above outdoors (Table B.12): I ≤ 550 ppm, II ≤ 800 ppm, III ≤ 1350 ppm, IV above.
    - Operative temperature for sedentary spaces, offices and classrooms (Table B.3): heating season
      (about 1.0 clo) I 21–23 °C, II 20–24 °C, III 19–25 °C; cooling season (about 0.5 clo)
      I 23.5–25.5 °C, II 23–26 °C, III 22–27 °C; IV outside III. The nodes measure air
      temperature, which we take for the operative temperature (no radiant sensor).

LAeq is an energy mean: 10·log10(mean(10^(L/10))). The arithmetic mean of dB figures under-reads any
varying noise (50 and 70 dB(A) for equal times is 67.0 dB(A), not 60).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import date
from enum import StrEnum

from pydantic import BaseModel

ICONE_STEP_S = 600  # décret n° 2012-14 art. 8: one point every ten minutes
ICONE_F1_ABOVE = 1000.0  # ppm: f1 counts values in ]1000, 1700]
ICONE_F2_ABOVE = 1700.0  # ppm: f2 counts values above 1700
ICONE_LEVELS = ("nul", "faible", "moyen", "élevé", "très élevé", "extrême")

OUTDOOR_CO2_PPM = 400.0  # EN 16798-1's usual outdoor level when none is measured
CO2_CATEGORY_LIMITS = (550.0, 800.0, 1350.0)  # ppm above outdoors: upper bounds of I, II, III

# (low, high) of categories I, II, III, °C (EN 16798-1 Table B.3)
HEATING_RANGES = ((21.0, 23.0), (20.0, 24.0), (19.0, 25.0))
COOLING_RANGES = ((23.5, 25.5), (23.0, 26.0), (22.0, 27.0))
HEATING_MONTHS = frozenset({10, 11, 12, 1, 2, 3, 4})  # October to April: the French heating season


class Category(StrEnum):
    I = "I"  # noqa: E741 (the standard's name)
    II = "II"
    III = "III"
    IV = "IV"


CATEGORIES = tuple(Category)


class Icone(BaseModel):
    """One ICONE: the index, the exact value it was rounded from and what went in."""

    index: int
    value: float
    level: str
    f1: float
    f2: float
    values: int  # the 10-minute CO2 values it was computed over


def icone_of_shares(f1: float, f2: float) -> float:
    """The unrounded index from the two shares."""
    if not (0 <= f1 and 0 <= f2 and f1 + f2 <= 1 + 1e-12):
        raise ValueError(f"shares must be in [0, 1] with f1 + f2 ≤ 1 (got f1={f1}, f2={f2})")
    return 2.5 * math.log2(1 + f1 + 3 * f2)


def round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def icone(co2_ppm: Iterable[float]) -> Icone | None:
    """ICONE of the 10-minute CO2 values of occupied time; None when there is none."""
    values = list(co2_ppm)
    if not values:
        return None
    n1 = sum(1 for v in values if ICONE_F1_ABOVE < v <= ICONE_F2_ABOVE)
    n2 = sum(1 for v in values if v > ICONE_F2_ABOVE)
    f1, f2 = n1 / len(values), n2 / len(values)
    value = icone_of_shares(f1, f2)
    index = round_half_up(value)
    return Icone(index=index, value=value, level=ICONE_LEVELS[index], f1=f1, f2=f2, values=len(values))


def co2_category(co2_ppm: float, outdoor_ppm: float = OUTDOOR_CO2_PPM) -> Category:
    """EN 16798-1 category of a CO2 level, from its excess over outdoors."""
    excess = co2_ppm - outdoor_ppm
    for category, limit in zip(CATEGORIES, CO2_CATEGORY_LIMITS, strict=False):
        if excess <= limit:
            return category
    return Category.IV


def heating_season(day: date) -> bool:
    return day.month in HEATING_MONTHS


def temperature_category(celsius: float, heating: bool) -> Category:
    """EN 16798-1 category of an indoor temperature in the heating (or else cooling) season."""
    for category, (low, high) in zip(CATEGORIES, HEATING_RANGES if heating else COOLING_RANGES, strict=False):
        if low <= celsius <= high:
            return category
    return Category.IV


def laeq(levels_db: Iterable[float]) -> float | None:
    """Energy mean of equal-duration LAeq values, dB(A); None for no values."""
    powers = [10 ** (level / 10) for level in levels_db]
    return 10 * math.log10(sum(powers) / len(powers)) if powers else None
