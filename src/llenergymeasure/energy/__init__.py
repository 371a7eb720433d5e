"""Energy meters behind one interface (see :mod:`.base`), the idle baseline, and meter selection."""

from .base import ComponentEnergy, CounterMeter, MeterSet
from .meters import carbon_intensity_g_per_kwh, select_meters

__all__ = ["ComponentEnergy", "CounterMeter", "MeterSet", "carbon_intensity_g_per_kwh", "select_meters"]
