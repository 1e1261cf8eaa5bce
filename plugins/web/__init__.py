"""The local web page: the bridge at a glance, read-only, from a thread of its own."""

from canbridge import hookimpl

from .sink import WebSink

__all__ = ["WebSink"]


@hookimpl
def canbridge_component_types() -> list[type]:
    return [WebSink]
