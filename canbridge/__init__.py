"""canbridge: bridge a battery BMS to a solar inverter over CAN.

The public API for plugins is re-exported here; plugins import nothing else from the core.
"""

__version__ = "0.1.0"

from canbridge.clock import Clock, Timer
from canbridge.codec import CodecError, Decoder, Encoder
from canbridge.component import Component, Context, Sink, Source, Transform
from canbridge.framesource import FrameSource, as_is
from canbridge.hooks import hookimpl
from canbridge.schema import (
    REQUIRED,
    BusRef,
    Choice,
    Either,
    Flag,
    Integer,
    ListOf,
    Number,
    Option,
    OptionError,
    Path,
    Table,
    Text,
)
from canbridge.signals import (
    ALARM_REPORT,
    REPORT_NONE,
    REPORT_RECEIVED,
    LatestValues,
    TimedValues,
    Update,
    Value,
    is_condition,
)

__all__ = [
    "ALARM_REPORT",
    "REPORT_NONE",
    "REPORT_RECEIVED",
    "REQUIRED",
    "BusRef",
    "Choice",
    "Clock",
    "CodecError",
    "Component",
    "Context",
    "Decoder",
    "Either",
    "Encoder",
    "Flag",
    "FrameSource",
    "Integer",
    "LatestValues",
    "ListOf",
    "Number",
    "Option",
    "OptionError",
    "Path",
    "Sink",
    "Source",
    "Table",
    "Text",
    "TimedValues",
    "Timer",
    "Transform",
    "Update",
    "Value",
    "__version__",
    "as_is",
    "hookimpl",
    "is_condition",
]
