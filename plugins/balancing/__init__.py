"""Cell balancing: a periodic hold of the SOC the inverter sees, so the bank absorbs long
enough at the charge voltage limit for its cells to balance (see `hold.py`)."""

from canbridge import hookimpl

from .hold import CellBalancing

__all__ = ["CellBalancing"]


@hookimpl
def canbridge_component_types() -> list[type]:
    return [CellBalancing]
