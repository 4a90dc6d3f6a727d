"""Building insight: air (ICONE, CO2 marks, comfort categories), occupancy from door counts, energy
(daily and monthly kWh, baseloads, OPERAT year) and noise (LAeq per occupied hour), per room and
building, computed from rollups (raw readings only for LAeq, an energy mean).

Each report takes a session, a `data.Place` (`data.place(session, building_id)`: the building, its
rooms and devices, and its site's calendar) and a range of local dates, and returns flat pydantic
rows that the API serves as JSON or CSV and the dashboard renders.
"""

from fleet.insight.air import AirDay, IconePeriod, air_days, icone_period
from fleet.insight.data import Place, place
from fleet.insight.energy import EnergyRow, OperatYear, energy_periods, operat
from fleet.insight.noise import NoiseHour, noise_hours
from fleet.insight.occupancy import OccupancyDay, occupancy_days

__all__ = [
    "AirDay",
    "EnergyRow",
    "IconePeriod",
    "NoiseHour",
    "OccupancyDay",
    "OperatYear",
    "Place",
    "air_days",
    "energy_periods",
    "icone_period",
    "noise_hours",
    "occupancy_days",
    "operat",
    "place",
]
