"""Pylontech over RS485: canbridge answers an inverter's polls as a Pylontech battery."""

from canbridge import hookimpl

from .sink import PylontechRs485Sink

__all__ = ["PylontechRs485Sink"]


@hookimpl
def canbridge_component_types() -> list[type]:
    return [PylontechRs485Sink]
