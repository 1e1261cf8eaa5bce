"""A realistic, deterministic LYNK II capture (candump -L), encoded with the project's DBC.

The day follows the ranges of protocols/discover-lynk2.md: an overnight discharge (-9 to
-15 A), a solar charge (40-73 A mid-day, some cloud) that tapers to ~29 A from 97 % and
climbs to 100 % (a balancing hold starts above 99 %), an absorb at 100 %, an evening
discharge with a load peak near -52 A; temperature 12-31 degC in whole degrees, constant
limits. Every second 0x351/354/355/356/35A, every 10 s 0x35E/370-373, 0.5 ms apart as on a
250 kbit/s bus. A few single spurious 46.x V samples and a few bursts of an unknown ID
(0x204) are mixed in, as seen in the field.

    python benchmarks/lynk2_day.py [OUT.log] [--hours H]

The same arguments always give the same bytes; `gaps` (start, length in seconds) leave
the battery silent, for the soak test.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import cantools.database

from canbridge.databases import builtin_dbc

DAY_START = datetime(2025, 6, 21, tzinfo=UTC).timestamp()
"""Midnight (UTC) of the captured day: a fixed date keeps every run byte-identical."""

SEED = 2025
CAPACITY_AH = 300.0
START_SOC = 62.0
FRAME_GAP = 0.0005
"""Seconds between frames of one burst (an 8-byte frame takes ~0.5 ms at 250 kbit/s)."""

LIMITS = {"charge_voltage_limit": 55.9, "charge_current_limit": 282.0,
          "discharge_current_limit": 282.0, "discharge_voltage_limit": 43.2}
SUPPORTED_ALARM_FIELDS = frozenset((*range(1, 9), *range(14, 22)))
"""0x35A fields the LYNK II reports: 2 (normal) in these, 3 (not supported) in the rest."""
STEADY_ALARMS = bytes.fromhex("ABAAFEAFAAFAFF")
"""The real steady 0x35A; the DBC encoding must give exactly these bytes."""

GLITCHES = 6
"""Single spurious low-voltage samples per day."""
UNKNOWN_BURSTS = 3

# (SOC %, open-circuit volts) of a 16-cell LiFePO4 bank, interpolated linearly.
OCV = ((0.0, 48.0), (10.0, 50.5), (30.0, 51.8), (50.0, 52.5), (80.0, 53.1), (95.0, 53.6),
       (99.0, 54.6), (100.0, 55.2))
RESISTANCE = 0.009
"""Ohm: volts per amp added to the OCV (charging raises the terminal voltage)."""


def _ocv(soc: float) -> float:
    for (s0, v0), (s1, v1) in itertools.pairwise(OCV):
        if soc <= s1:
            return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
    return OCV[-1][1]


def _solar(hour: float, cloud: float) -> float:
    """Amps of solar production reaching the battery side, before the house load."""
    if not 6.0 < hour < 19.0:
        return 0.0
    return 92.0 * math.sin(math.pi * (hour - 6.0) / 13.0) ** 1.6 * cloud


def _load(hour: float, rng: random.Random) -> float:
    """House load in amps: small at night, a peak in the evening."""
    base = 12.0 + rng.uniform(-2.5, 2.5)
    if 17.5 <= hour < 21.5:
        base += 38.0 * math.sin(math.pi * (hour - 17.5) / 4.0) + rng.uniform(-3.0, 3.0)
    elif 7.0 <= hour < 17.5:
        base += 6.0
    return base


def _taper(soc: float, elapsed_full: float) -> float:
    """Most charge current the BMS takes near full: ~29 A at 97 %, ~2 A at 100 %, then an
    absorb that decays towards 0.5 A."""
    if soc < 97.0:
        return 1e9
    if soc < 100.0:
        return 29.0 - 9.0 * (soc - 97.0)
    return max(0.5, 2.0 * math.exp(-elapsed_full / 1800.0))


class _Encoder:
    """cantools encoding from the DBC, memoised: most frames repeat a recent value set."""

    def __init__(self) -> None:
        self.db = cantools.database.load_file(str(builtin_dbc("discover_lynk2")),
                                              database_format="dbc", strict=True)
        self._cache: dict[tuple[int, tuple[tuple[str, float | int], ...]], bytes] = {}

    def encode(self, frame_id: int, values: dict[str, float | int]) -> bytes:
        key = (frame_id, tuple(values.items()))
        data = self._cache.get(key)
        if data is None:
            message = self.db.get_message_by_frame_id(frame_id)
            data = message.encode(values, scaling=True, strict=True)
            self._cache[key] = data
        return data

    def text(self, frame_id: int, signal: str, text: str) -> bytes:
        return self.encode(frame_id, {signal: int.from_bytes(text.encode("ascii").ljust(8, b"\0"),
                                                             "little")})


def frames(hours: float = 24.0, gaps: Sequence[tuple[float, float]] = ()
           ) -> Iterator[tuple[float, int, bytes]]:
    """(timestamp, ID, data) of every frame, in time order."""
    rng = random.Random(SEED)
    enc = _Encoder()
    alarms = enc.encode(0x35A, {signal.name: 2 if signal.start // 2 in SUPPORTED_ALARM_FIELDS
                                else 3 for signal in enc.db.get_message_by_frame_id(0x35A).signals})
    if alarms != STEADY_ALARMS:
        raise AssertionError(f"0x35A encodes as {alarms.hex()}, not {STEADY_ALARMS.hex()}")
    limits = enc.encode(0x351, LIMITS)
    names = (enc.text(0x35E, "manufacturer", "DISCOVER"),
             enc.text(0x370, "model_first_half", "Discover"),
             enc.text(0x371, "model_second_half", " AES"),
             enc.encode(0x372, {"firmware_build": 0, "firmware_patch": 0, "firmware_minor": 1,
                                "firmware_major": 2}),
             enc.encode(0x373, {"protocol_version": 1}))
    seconds = int(hours * 3600)
    glitch_at = set(rng.sample(range(600, seconds), min(GLITCHES, max(0, seconds - 600))))
    unknown_at = set(rng.sample(range(seconds), min(UNKNOWN_BURSTS, seconds)))
    soc = START_SOC
    full_since: float | None = None
    cloud = 1.0
    for second in range(seconds):
        hour = (second / 3600.0) % 24.0
        if second % 300 == 0:
            cloud = rng.choice((1.0, 1.0, 0.95, 0.85, 0.7))
        current = _solar(hour, cloud) - _load(hour, rng)
        elapsed_full = 0.0 if full_since is None else second - full_since
        current = max(-52.0, min(current, 85.0, _taper(soc, elapsed_full)))
        soc = min(100.0, max(0.0, soc + current / 3600.0 / CAPACITY_AH * 100.0))
        if soc >= 100.0 and full_since is None:
            full_since = second
        elif soc < 99.5:
            full_since = None
        if any(start <= second < start + length for start, length in gaps):
            continue
        current = round(current, 1)
        voltage = round(min(55.9, max(51.5, _ocv(soc) + RESISTANCE * current)), 1)
        if second in glitch_at:
            voltage = round(rng.uniform(46.0, 46.9), 1)
        temperature = round(21.5 + 9.5 * math.sin(2.0 * math.pi * (hour - 9.0) / 24.0))
        whole_soc = round(soc)
        burst = [limits,
                 enc.encode(0x354, {"capacity_nominal": int(CAPACITY_AH),
                                    "capacity_remaining": round(CAPACITY_AH * soc / 100.0)}),
                 enc.encode(0x355, {"soc": whole_soc, "soh": 100}),
                 enc.encode(0x356, {"voltage": voltage, "current": current,
                                    "temperature": temperature}),
                 alarms]
        ids = [0x351, 0x354, 0x355, 0x356, 0x35A]
        if second % 10 == 0:
            burst += names
            ids += [0x35E, 0x370, 0x371, 0x372, 0x373]
        if second in unknown_at:
            burst += [rng.randbytes(8) for _ in range(4)]
            ids += [0x204] * 4
        t = DAY_START + second
        for index, (frame_id, data) in enumerate(zip(ids, burst, strict=True)):
            yield t + index * FRAME_GAP, frame_id, data


def write(path: Path, hours: float = 24.0, gaps: Sequence[tuple[float, float]] = ()) -> int:
    """Write the capture to `path` (candump -L, channel can0); returns the frame count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="ascii") as out:
        for t, frame_id, data in frames(hours, gaps):
            out.write(f"({t:.6f}) can0 {frame_id:03X}#{data.hex().upper()}\n")
            count += 1
    tmp.replace(path)  # a half-written capture is never mistaken for a finished one
    return count


def ensure(path: Path, hours: float = 24.0) -> Path:
    """Generate the capture once; later calls reuse it (until this generator changes)."""
    if not path.exists() or path.stat().st_mtime < Path(__file__).stat().st_mtime:
        write(path, hours)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path,
                        default=Path(__file__).parent / "data" / "lynk2-day.log")
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    print(f"{args.out}: {write(args.out, args.hours)} frames")


if __name__ == "__main__":
    main()
