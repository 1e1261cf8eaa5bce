"""sd-writes: what a day of canbridge writes to the SD card, counted at the block layer.

    sudo python benchmarks/sd_writes.py [--flush-every SECS]

Needs root (losetup, mkfs.ext4, mount). Makes a 128 MiB ext4 file system with 4 KiB blocks
(as Raspberry Pi OS's) on a loop device, which stands for the SD card, and replays a day of
LYNK II traffic at full speed through the production pipeline with its files where the
installed service keeps them: the data log and the balancing state on the card (/var/log,
/var/lib), the status file on tmpfs (/run). The figure is the loop device's sectors written
(/sys/block/loopN/stat) from just before the run to after a final sync: file data, ext4
metadata and journal together.

Every data-log block is fsynced, so a full-speed replay makes the same writes as a real
day: the count does not depend on how fast the day goes by.

Target: <= 0.5 MiB a day at default settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import benchlib
import tomli_w

TARGET_MIB = 0.5
IMAGE_MIB = 128
SECTOR = 512


def sectors_written(device: str) -> int:
    """Field 7 of /sys/block/DEV/stat: sectors written since the device appeared."""
    return int(Path(f"/sys/block/{Path(device).name}/stat").read_text().split()[6])


def run(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = benchlib.arguments(__doc__)
    parser.add_argument("--flush-every", type=float, metavar="SECS",
                        help="the data log's flush_every_secs (default: the option's default)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("sd-writes needs root for losetup and mount: sudo .venv/bin/python "
                         "benchmarks/sd_writes.py")
    capture = benchlib.day_capture()
    work = Path(tempfile.mkdtemp(prefix="sd-writes-", dir=benchlib.DATA))
    image, card, run_dir = work / "card.img", work / "card", work / "run"
    with image.open("wb") as file:
        file.truncate(IMAGE_MIB * 1024 * 1024)
    # Initialised in full now: ext4's lazy init would otherwise write during the run. 4 KiB
    # blocks as on Raspberry Pi OS's root file system (mke2fs picks 1 KiB for one this
    # small, which would count each block a quarter of what a Pi writes).
    run(["mkfs.ext4", "-q", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0",
         str(image)])
    device = run(["losetup", "--find", "--show", str(image)])
    card.mkdir()
    try:
        run(["mount", device, str(card)])
        try:
            print(f"sd-writes: {capture.name} at full speed; the card is {device} (ext4, "
                  f"4 KiB blocks, {IMAGE_MIB} MiB); {benchlib.machine()}")
            measure(capture, card, run_dir, device, args.flush_every)
        finally:
            run(["umount", str(card)])
    finally:
        run(["losetup", "--detach", device])
        shutil.rmtree(work)


def measure(capture: Path, card: Path, run_dir: Path, device: str,
            flush_every: float | None) -> None:
    with benchlib.Mosquitto(benchlib.DATA / "broker-sd-writes") as broker:
        battery = {"interface": "replay", "path": str(capture), "speed": "max"}
        pipeline = benchlib.write_pipeline(run_dir, battery, port=broker.port)
        config = tomllib.loads(pipeline.read_text())
        on_card = card / "var"
        config["sinks"]["datalog"]["path"] = str(on_card / "log" / "battery.csv")
        if flush_every is not None:
            config["sinks"]["datalog"]["flush_every_secs"] = flush_every
        config["transforms"]["balancing"]["state_file"] = str(on_card / "lib" / "balancing.toml")
        if "web" in config["sinks"]:
            config["sinks"]["web"]["history_file"] = config["sinks"]["datalog"]["path"]
        pipeline.write_text(tomli_w.dumps(config))
        os.sync()
        before = sectors_written(device)
        result = benchlib.run_canbridge(pipeline, log=run_dir / "canbridge.log")
        os.sync()
        after = sectors_written(device)
    if result.exit_code != 0:
        raise SystemExit(f"canbridge exited with {result.exit_code}:\n{result.stderr[-3000:]}")
    written = (after - before) * SECTOR
    data = sum(path.stat().st_size for path in on_card.rglob("*") if path.is_file())
    mib = written / 1024 / 1024
    flush = config["sinks"]["datalog"].get("flush_every_secs", "default")
    print(f"  written to the card: {mib:.3f} MiB ({written:,} bytes) for {data:,} bytes of "
          f"files (data log flush_every_secs = {flush})")
    print(f"target: <= {TARGET_MIB:g} MiB a day {'met' if mib <= TARGET_MIB else 'NOT met'}")


if __name__ == "__main__":
    main()
