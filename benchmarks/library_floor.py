"""library-floor: the day replay with the libraries alone, the yardstick of replay_day.py.

    python benchmarks/library_floor.py [--runs N]

What any bridge built on these libraries has to do for the day capture, with nothing of
canbridge: python-can reads `data/lynk2-day.log` (`can.LogReader`), cantools decodes every
frame of the LYNK II DBC (`Database.decode_message`), and each second of capture time (at
every 0x351) cantools encodes the six Pylontech burst frames from the latest values
(`Message.encode`; limits, SOC, voltage, current and temperature copied, flags
left 0) and python-can sends them on a `virtual` bus. Each run is a
fresh interpreter; the figure is its wall time from spawn to exit, as replay_day.py
measures `canbridge run`. Also printed: the same loop without the sends, which is the floor
as the performance issue defined it (reading + bare decode/encode).

The issue's target: the production pipeline's full-speed day <= 1.3 x this floor.
"""

from __future__ import annotations

import subprocess
import sys
import time

import benchlib

TARGET_RATIO = 1.3

FLOOR = """\
import sys
import can, cantools.database
from canbridge.databases import builtin_dbc

capture, send = sys.argv[1], sys.argv[2] == "send"
lynk = cantools.database.load_file(str(builtin_dbc("discover_lynk2")))
pylon = cantools.database.load_file(str(builtin_dbc("pylontech")))
burst = [pylon.get_message_by_frame_id(i) for i in (0x351, 0x355, 0x356, 0x359, 0x35C, 0x35E)]
bus = can.Bus(interface="virtual", channel=f"floor-{id(lynk)}")
known = {m.frame_id for m in lynk.messages}
latest = {s.name: 0 for m in pylon.messages for s in m.signals}
latest.update(soh=100, module_count=3, manufacturer=0x2020204E4F4C5950)
copied = {s.name for i in (0x351, 0x355, 0x356) for s in pylon.get_message_by_frame_id(i).signals}
for frame in can.LogReader(capture):
    if frame.arbitration_id not in known:
        continue
    values = lynk.decode_message(frame.arbitration_id, frame.data, decode_choices=False)
    for name, value in values.items():
        if name in copied:
            latest[name] = value
    if frame.arbitration_id == 0x351:
        for message in burst:
            data = message.encode({s.name: latest[s.name] for s in message.signals},
                                  strict=False)
            if send:
                bus.send(can.Message(arbitration_id=message.frame_id, data=data,
                                     is_extended_id=False))
bus.shutdown()
"""


def one_run(capture: benchlib.Path, send: bool) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", FLOOR, str(capture), "send" if send else "bare"],
                   check=True)
    return time.monotonic() - started


def main() -> None:
    parser = benchlib.arguments(__doc__, runs=3)
    args = parser.parse_args()
    capture = benchlib.day_capture()
    print(f"library-floor: {capture.name}; {benchlib.machine()}")
    walls: dict[bool, list[float]] = {False: [], True: []}
    for index in range(args.runs):
        for send in (False, True):
            wall = one_run(capture, send)
            walls[send].append(wall)
            print(f"  run {index + 1} ({'with' if send else 'without'} the sends): {wall:.2f} s")
    bare, sending = benchlib.median(walls[False]), benchlib.median(walls[True])
    print(f"median of {args.runs}: {bare:.2f} s read + decode + encode; {sending:.2f} s with "
          f"the sends; canbridge's day within {TARGET_RATIO:g} x the floor: "
          f"<= {TARGET_RATIO * bare:.2f} s")


if __name__ == "__main__":
    main()
