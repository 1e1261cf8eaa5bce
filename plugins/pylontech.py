"""Pylontech sink: the battery's signals as the Pylontech LV CAN protocol, to an inverter.

Every period one burst of 0x351, 0x355, 0x356, 0x359, 0x35C and 0x35E goes out, in ID
order, encoded with the layouts of `dbc/pylontech.dbc` (and `dbc/pylontech_decivolt.dbc` for
inverters that read the pack voltage in 0.1 V). What the burst says (flags, limits, the safe
state) is decided by the core's stop model (`canbridge.safety`), shared with every inverter
sink; this module maps the decision onto the Pylontech bits. Nothing this sink does raises a
limit above what the battery asked for; the one exception is `stop_current`, for inverters
that read 0 A as "no limit".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import can

from canbridge import (
    REQUIRED,
    BusRef,
    Choice,
    Context,
    Encoder,
    Flag,
    Integer,
    Number,
    Option,
    OptionError,
    Text,
    Timer,
    Update,
    Value,
    hookimpl,
)
from canbridge.databases import MessageLayout, builtin_dbc, load_dbc
from canbridge.safety import (
    INVERTER_OPTIONS,
    Decision,
    InverterSink,
    StopModel,
)

KEEPALIVE_ID = 0x305
BITRATE = 500_000
BURST_IDS = (0x351, 0x355, 0x356, 0x359, 0x35C, 0x35E)
DECIVOLT_DBC = "pylontech_decivolt"
"""0x356 with the pack voltage in 0.1 V (Sol-Ark LV v1.3): a second DBC, not a code branch."""

# 0x359 bit -> the vocabulary alarms/warnings that set it (signals.md mapping table).
ALARM_BITS: dict[str, tuple[str, ...]] = {
    "alarm_high_voltage": ("alarm_high_voltage",),
    "alarm_low_voltage": ("alarm_low_voltage",),
    "alarm_high_temperature": ("alarm_high_temp_charge", "alarm_high_temp_discharge"),
    "alarm_low_temperature": ("alarm_low_temp_charge", "alarm_low_temp_discharge"),
    "alarm_high_discharge_current": ("alarm_high_discharge_current",),
    "alarm_high_charge_current": ("alarm_high_charge_current",),
    "warning_high_voltage": ("warning_high_voltage",),
    "warning_low_voltage": ("warning_low_voltage",),
    "warning_high_temperature": ("warning_high_temp_charge", "warning_high_temp_discharge"),
    "warning_low_temperature": ("warning_low_temp_charge", "warning_low_temp_discharge"),
    "warning_high_discharge_current": ("warning_high_discharge_current",),
    "warning_high_charge_current": ("warning_high_charge_current",),
    "warning_internal_communication": ("warning_internal", "warning_cell_imbalance"),
}
"""The system-error bit is the stop model's: alarms, stale data or no alarm report."""

ROUNDING = {"charge_voltage_limit": "down", "charge_current_limit": "down",
            "discharge_current_limit": "down", "discharge_voltage_limit": "up"}
"""A limit is never rounded towards the unsafe side: CVL, CCL, DCL down, DVL up (the stop
model already puts them on the field's grid; this keeps any encoder input safe)."""


def manufacturer_value(text: str) -> int:
    """The 0x35E signal value of a name: its ASCII bytes, space padded, as one LE integer."""
    return int.from_bytes(text.encode("ascii").ljust(8, b" "), "little")


class PylontechSink(InverterSink):
    """Sends the battery's state to a Pylontech-compatible inverter."""

    type_name = "pylontech"
    foreign_ids = frozenset({KEEPALIVE_ID})  # the inverter's: a second sender breaks it
    summary = "send the battery's limits and state to an inverter as Pylontech LV CAN frames"
    options = (
        Option("bus", BusRef(non_empty=True), REQUIRED,
               "the inverter bus (500 kbit/s) the frames are sent on"),
        INVERTER_OPTIONS[0],
        Option("period_secs", Number(min=0.1, max=2.5), 1.0,
               "seconds between bursts; some inverters stop after 3 s without frames"),
        *INVERTER_OPTIONS[1:],
        Option("manufacturer", Text(max_length=8, ascii=True, non_empty=True), "PYLON",
               "name in 0x35E, at most 8 ASCII characters, space padded (Deye needs PYLON)"),
        Option("modules", Integer(min=1, max=255), 1,
               "number of battery modules reported in 0x359"),
        Option("pad_to_8_bytes", Flag(), False,
               "pad every frame to 8 bytes (Sol-Ark needs it; standard is shorter)"),
        Option("voltage_resolution", Choice((0.01, 0.1)), 0.01,
               "resolution of the pack voltage in 0x356, in V (Sol-Ark: 0.1)"),
        Option("inverter_timeout_secs", Number(min=1.0, max=3600.0), 10.0,
               "the inverter counts as alive while its 0x305 was seen within this time"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str] | OptionError]:
        yield from super().check(config)
        if not config["manufacturer"].isprintable():
            yield "manufacturer", "must be printable ASCII"

    @classmethod
    def frame_ids(cls, config: Mapping[str, Any]) -> tuple[frozenset[int], frozenset[int]]:
        return frozenset({KEEPALIVE_ID}), frozenset(BURST_IDS)

    @classmethod
    def check_bus(cls, config: Mapping[str, Any], option: str, bus: Mapping[str, Any]
                  ) -> Iterable[OptionError]:
        return cls.bitrate_warnings(option, config[option], bus, BITRATE,
                                    "Pylontech inverters talk")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        cfg = self.config
        self.period = cfg["period_secs"]
        self.pad = cfg["pad_to_8_bytes"]
        self.model = StopModel(
            self, sending=f"sending Pylontech frames every {self.period:g} s")
        self.frames_out = 0
        self.bursts = 0
        self.keepalives = 0
        self.inverter_seen: float | None = None
        self._inverter_was_alive = False
        self._started_at: float | None = None
        self._timer: Timer | None = None
        self._encoders = tuple(Encoder(message, ROUNDING) for message in
                               burst_messages(cfg["voltage_resolution"]))
        # The last burst's frames, and the data each was made from: a frame whose data did
        # not change is sent again as it is (the bus copies what it sends).
        self._data: list[bytes | None] = [None] * len(self._encoders)
        self._frames: list[can.Message] = [can.Message()] * len(self._encoders)
        self._constants: dict[str, Value] = {
            "module_count": cfg["modules"],
            "product_code": "PN",
            "force_charge_1": False,
            "force_charge_2": False,
            "request_full_charge": False,
            "manufacturer": manufacturer_value(cfg["manufacturer"]),
        }

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        self.bus = self.context.bus(self.config["bus"])
        self._started_at = self.clock.now()
        self._timer = self.clock.every(self.period, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    # -- events ------------------------------------------------------------------------

    def on_update(self, update: Update) -> None:
        model = self.model
        model.accept(update)
        if model.state == "waiting" and self._timer is not None and model.complete(
                self.clock.now()):
            # The first burst goes out as soon as the data is complete, not up to a period
            # later; the bursts keep that phase.
            self._timer.cancel()
            self._timer = self.clock.every(self.period, self._tick, first=0.0)

    def on_frame(self, msg: can.Message) -> None:
        if msg.arbitration_id != KEEPALIVE_ID or msg.is_error_frame or msg.is_remote_frame:
            return
        self.keepalives += 1
        self.inverter_seen = msg.timestamp
        if not self._inverter_was_alive:
            self._inverter_was_alive = True
            self.log.info("inverter alive: 0x305 keepalive received%s",
                          " (29-bit ID)" if msg.is_extended_id else "")

    def _tick(self) -> None:
        now = self.clock.now()
        self._watch_inverter(now)
        decision = self.model.decide(now)
        if decision is not None:
            self._send_burst(self._frame_values(decision))

    def _watch_inverter(self, now: float) -> None:
        if self._inverter_was_alive and not self._inverter_alive(now):
            self._inverter_was_alive = False
            self.log.info("inverter keepalive 0x305 not seen for %g s",
                          self.config["inverter_timeout_secs"])

    def _inverter_alive(self, now: float) -> bool:
        return (self.inverter_seen is not None
                and now - self.inverter_seen <= self.config["inverter_timeout_secs"])

    # -- frame content -----------------------------------------------------------------

    def _frame_values(self, d: Decision) -> dict[str, Value]:
        """Every DBC signal of the burst, as physical values, per signals.md."""
        active = d.active
        values: dict[str, Value] = {bit: not active.isdisjoint(sources)
                                    for bit, sources in ALARM_BITS.items()}
        values.update(
            alarm_system_error=d.system_error,
            charge_enable=d.charge_enable,
            discharge_enable=d.discharge_enable,
            charge_voltage_limit=d.charge_voltage_limit,
            charge_current_limit=d.charge_current_limit,
            discharge_current_limit=d.discharge_current_limit,
            discharge_voltage_limit=d.discharge_voltage_limit,
            soc=d.soc,
            soh=d.soh,
            voltage=d.voltage,
            current=d.current,
            temperature=d.temperature,
        )
        values.update(self._constants)
        return values

    def _send_burst(self, values: Mapping[str, Value]) -> None:
        clamped: list[str] = []
        frames = self._frames
        for i, encoder in enumerate(self._encoders):
            data = encoder.encode(values, clamped)
            if data is not self._data[i]:  # equal inputs give the very same bytes
                self._data[i] = data
                frames[i] = can.Message(arbitration_id=encoder.frame_id, is_extended_id=False,
                                        data=data.ljust(8, b"\0") if self.pad else data)
        self.bursts += 1
        if clamped:
            self.context.limited.warning(
                "clamped", "values out of the Pylontech range were clamped: %s",
                ", ".join(sorted(set(clamped))))
        if self.context.dry_run:
            self.log.info("dry run, the inverter would get: CVL %g V, CCL %g A, DCL %g A, "
                          "DVL %g V, SOC %s %%, charge %s, discharge %s",
                          values["charge_voltage_limit"], values["charge_current_limit"],
                          values["discharge_current_limit"], values["discharge_voltage_limit"],
                          values["soc"], "on" if values["charge_enable"] else "off",
                          "on" if values["discharge_enable"] else "off")
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("burst: %s", " ".join(
                f"{m.arbitration_id:03X}#{m.data.hex().upper()}" for m in frames))
        for msg in frames:
            if self.bus.send(msg):
                self.frames_out += 1
            elif not self.context.dry_run:
                self.errors += 1

    # -- health ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        oldest = self.model.oldest_update()
        reference = oldest if oldest is not None else self._started_at
        stale_after = self.model.stale_after
        stale_secs = 0.0 if reference is None else max(0.0, now - reference - stale_after)
        return {
            **self.model.status(now),
            "frames_in": self.keepalives,
            "frames_out": self.frames_out,
            "bursts": self.bursts,
            "errors": self.errors,
            "last_seen_age": self.age(oldest),
            "stale_secs": round(stale_secs, 3),
            "inverter_alive": self._inverter_alive(now),
            "inverter_last_seen_age": self.age(self.inverter_seen),
        }


def burst_messages(voltage_resolution: float) -> list[MessageLayout]:
    """The burst's DBC messages in ID order; a layout variant DBC replaces its IDs."""
    messages = {m.frame_id: m for m in load_dbc(builtin_dbc("pylontech")).messages}
    if voltage_resolution == 0.1:
        messages.update({m.frame_id: m for m in load_dbc(builtin_dbc(DECIVOLT_DBC)).messages})
    return [messages[frame_id] for frame_id in BURST_IDS]


@hookimpl
def canbridge_component_types() -> list[type]:
    return [PylontechSink]


@hookimpl
def canbridge_dbc_files() -> list[Path]:
    return [builtin_dbc("pylontech"), builtin_dbc(DECIVOLT_DBC)]
