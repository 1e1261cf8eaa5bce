"""Charge shaping: transforms that lower the battery's limits, never raise them.

- `limit-ramp` spreads increases of CCL, DCL and CVL out in time;
- `temperature-derate` caps CCL (and DCL) by a curve of the battery temperature;
- `charge-taper` caps CCL as SOC (and pack voltage) approach full;
- `soc-reserve` stops discharging at a minimum SOC and charging at a maximum one.

The rule they share (lower only, never invent a limit, pass the rest) is the core's
`canbridge.shaping.Shaper`.
"""

from canbridge import hookimpl

from .derate import TemperatureDerate
from .ramp import LimitRamp
from .reserve import SocReserve
from .taper import ChargeTaper

__all__ = ["ChargeTaper", "LimitRamp", "SocReserve", "TemperatureDerate"]


@hookimpl
def canbridge_component_types() -> list[type]:
    return [LimitRamp, TemperatureDerate, ChargeTaper, SocReserve]
