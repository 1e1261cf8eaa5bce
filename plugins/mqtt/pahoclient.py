"""paho's client, imported by the MQTT thread when it starts, never by the engine thread:
paho and ssl would add 10 ms here (far more on a Pi) before the inverter's first frame."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

__all__ = ["CallbackAPIVersion", "Client", "MQTTErrorCode", "mqtt"]

SELECT_SECS = 10.0
"""How long paho's network thread sleeps in select() with nothing to do (paho's own default
is 1 s). Every publish wakes it through paho's socket pair, so only the keepalive check waits:
a ping at most 10 s late is still well inside the broker's 1.5 x 30 s."""


class Client(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed (paho's
    on_connect_fail callback does not say: refused, timed out, certificate rejected...)."""

    last_connect_error: OSError | None = None

    def _thread_main(self) -> None:
        """loop_start()'s thread, with a longer select(): one wake-up in ten on an idle Pi.
        (Should paho rename this, its own 1 s loop runs instead: nothing breaks.)"""
        try:
            self.loop_forever(timeout=SELECT_SECS, retry_first_connection=True)
        finally:
            self._thread = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise
