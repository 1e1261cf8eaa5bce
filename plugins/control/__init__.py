"""Owner control: set values from Home Assistant (`controls`) and time-of-use windows
(`schedule`). Both only ever lower the battery's limits (the core's `Shaper`)."""

from canbridge import hookimpl

from .controls import Controls
from .schedule import Schedule

__all__ = ["Controls", "Schedule"]


@hookimpl
def canbridge_component_types() -> list[type]:
    return [Controls, Schedule]
