"""MQTT sink with Home Assistant discovery, availability and the legacy DiscoverStorage topic."""

from canbridge import hookimpl

from .sink import MqttSink

__all__ = ["MqttSink"]


@hookimpl
def canbridge_component_types() -> list[type]:
    return [MqttSink]
