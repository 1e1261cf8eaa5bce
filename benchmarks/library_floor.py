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

FLOOR = benchlib.LIBRARIES_ONLY + """
import sys

capture, send = sys.argv[1], sys.argv[2] == "send"
for frame in can.LogReader(capture):
    take(frame)
    if frame.arbitration_id == 0x351:
        send_burst(send)
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
