"""What the benchmark scripts share: the production pipeline, a local mosquitto, running
`canbridge run` as a child process with its own resource usage, and small statistics."""

from __future__ import annotations

import argparse
import compileall
import functools
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import lynk2_day
import tomli_w

BENCH = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CANBRIDGE_BENCH_DATA") or BENCH / "data")
"""Where the scripts write; $CANBRIDGE_BENCH_DATA where the tree is read-only (a VM's)."""

# The throw-away broker is the one the test suite starts.
sys.path.insert(0, str(BENCH.parent / "tests"))
from broker import HOST, Mosquitto  # noqa: E402, F401  (re-exported for the scripts)

PRODUCTION = BENCH.parent / "examples" / "pipeline.toml"
SHM = Path("/dev/shm")
"""A tmpfs, standing for the /run an installed bridge keeps its status file in."""


def arguments(doc: str, runs: int | None = None) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring's first paragraph, and `--runs` when it
    repeats."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if runs is not None:
        parser.add_argument("--runs", type=int, default=runs)
    return parser


def day_capture() -> Path:
    """The day of LYNK II traffic every benchmark replays (written once: lynk2_day.py)."""
    return lynk2_day.ensure(DATA / "lynk2-day.log")
CACHE = DATA / "cache"
"""canbridge's cache folder in every run (plugin index, DBC layouts): warm after the first."""


@functools.cache
def compile_tree(root: Path) -> None:
    """Byte-compile a canbridge tree, as `pip install` does: where PYTHONDONTWRITEBYTECODE is
    set, every start would otherwise compile canbridge's modules again (45 ms here)."""
    for package in ("canbridge", "plugins", "canbridge_plugins"):
        if (root / package).is_dir():
            compileall.compile_dir(root / package, quiet=2)  # a read-only tree: as it is


LIBRARIES_ONLY = """\
import can, cantools.database
from canbridge.databases import builtin_dbc

lynk = cantools.database.load_file(str(builtin_dbc("discover_lynk2")))
pylon = cantools.database.load_file(str(builtin_dbc("pylontech")))
burst = [pylon.get_message_by_frame_id(i) for i in (0x351, 0x355, 0x356, 0x359, 0x35C, 0x35E)]
bus = can.Bus(interface="virtual", channel=f"floor-{id(lynk)}")
known = {m.frame_id for m in lynk.messages}
latest = {s.name: 0 for m in pylon.messages for s in m.signals}
latest.update(soh=100, module_count=3, manufacturer=0x2020204E4F4C5950)
copied = {s.name for i in (0x351, 0x355, 0x356) for s in pylon.get_message_by_frame_id(i).signals}

def take(frame):
    if frame.arbitration_id in known:
        values = lynk.decode_message(frame.arbitration_id, frame.data, decode_choices=False)
        for name, value in values.items():
            if name in copied:
                latest[name] = value

def send_burst(send=True):
    for message in burst:
        data = message.encode({s.name: latest[s.name] for s in message.signals}, strict=False)
        if send:
            bus.send(can.Message(arbitration_id=message.frame_id, data=data,
                                 is_extended_id=False))
"""
"""The start of the floor scripts' child programs: what any bridge built on python-can and
cantools does, with nothing of canbridge: `take(frame)` decodes a LYNK II frame and keeps
the values the burst copies (limits, SOC, voltage, current, temperature; flags stay 0),
`send_burst()` encodes the six Pylontech burst frames from them and sends them on a
`virtual` bus."""


def write_pipeline(folder: Path, battery: dict[str, Any], *, port: int,
                   record_inverter: bool = False, stale_after: float = 5.0,
                   sinks: dict[str, dict[str, Any]] | None = None,
                   production: Path = PRODUCTION, status_on_tmpfs: bool = False) -> Path:
    """The production pipeline (examples/pipeline.toml, or `production`: a baseline tree's
    own) in `folder`, on software buses and a local broker, its files inside `folder` (fresh:
    no balancing state, no old logs). `status_on_tmpfs`: the status file in RAM, as an
    installed bridge has it (/run/canbridge), instead of in `folder`."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    status = folder / "status.json"
    if status_on_tmpfs and SHM.is_dir():
        status = SHM / f"canbridge-bench-{os.getpid()}-{folder.name}" / "status.json"
        shutil.rmtree(status.parent, ignore_errors=True)
    config = tomllib.loads(production.read_text())
    config["pipeline"]["name"] = "bench"
    config["buses"]["battery"] = battery
    config["buses"]["inverter"] = {"interface": "virtual",
                                   "channel": f"bench-{os.getpid()}-{folder.name}"}
    if record_inverter:
        config["buses"]["inverter"]["record"] = str(folder / "inverter.log")
    config["transforms"]["balancing"]["state_file"] = str(folder / "balancing.toml")
    config["sinks"]["inverter"]["stale_after_secs"] = stale_after
    config["sinks"]["mqtt"].update(host=HOST, port=port)
    config["sinks"]["datalog"]["path"] = str(folder / "log" / "battery.csv")
    if "web" in config["sinks"]:  # a free port: runs side by side must not collide
        config["sinks"]["web"].update(listen="127.0.0.1:0",
                                      history_file=str(folder / "log" / "battery.csv"))
    config["sinks"].update(sinks or {})
    config["status"] = {"file": str(status)}
    path = folder / "pipeline.toml"
    path.write_text(tomli_w.dumps(config))
    return path


@dataclass
class ChildRun:
    exit_code: int
    started: float
    """time.time() just before the child was spawned: a live run records Unix times."""
    wall: float
    cpu: float
    peak_rss_mb: float
    stderr: str


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time each thread of process `pid` has used so far, by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return out


def canbridge_command(pipeline: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "canbridge", "run", str(pipeline), *args]


# Linux keeps a process's resident high-water mark across exec, so the ru_maxrss of a child
# is at least the size of whoever forked it: spawned straight from this script (30 MB and
# more) or from pytest, canbridge's own peak would be hidden. This tiny spawner (python -S,
# under 10 MB) forks canbridge, passes SIGINT/SIGTERM on, and writes canbridge's own
# wait4() figures to the file named by its first argument.
SPAWNER = """\
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda n, f: os.kill(pid, n))
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    out.write(f"{code} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}\\n")
sys.exit(code if code >= 0 else 128 - code)
"""


class Child:
    """`canbridge run` in a child process (through SPAWNER), its output in `log`."""

    def __init__(self, pipeline: Path, *args: str, log: Path,
                 env: dict[str, str] | None = None, prefix: Sequence[str] = ()):
        """`prefix`: a command that execs the rest (`taskset -c 0`, `nice -n 5`)."""
        self.log = log
        compile_tree(BENCH.parent)
        env = dict(os.environ if env is None else env)
        env.pop("CACHE_DIRECTORY", None)
        env["XDG_CACHE_HOME"] = str(CACHE)
        self._usage = log.with_name(log.name + ".usage")
        self._usage.unlink(missing_ok=True)
        with log.open("wb") as out:
            self.started = time.time()
            self._started_monotonic = time.monotonic()
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-S", "-c", SPAWNER, str(self._usage),
                 *canbridge_command(pipeline, *args)], stdout=out, stderr=out, env=env,
                cwd=log.parent)
        self._pid: int | None = None

    @property
    def pid(self) -> int:
        """canbridge's process id (the spawner's only child)."""
        while self._pid is None:
            spawner = self.process.pid
            children = Path(f"/proc/{spawner}/task/{spawner}/children").read_text().split()
            if children:
                self._pid = int(children[0])
            else:
                time.sleep(0.001)
        return self._pid

    def running(self) -> bool:
        return self.process.poll() is None

    def interrupt(self) -> None:
        """Stop canbridge as Ctrl-C would."""
        os.kill(self.pid, signal.SIGINT)

    def cpu_seconds(self) -> float:
        """CPU time canbridge's threads have used so far: the kernel's nanosecond run time
        per thread (/proc/PID/task/TID/schedstat), where /proc/PID/stat counts 10 ms ticks,
        too coarse for a process that is idle nearly all the time. A thread that ended is
        not counted: measure windows in which the pipeline's threads all live."""
        return sum(self.thread_cpu_seconds().values())

    def thread_cpu_seconds(self) -> dict[int, float]:
        """cpu_seconds per thread id (canbridge's engine thread is the one whose id is
        `pid`)."""
        return thread_cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS")

    def reap(self) -> ChildRun:
        """Wait for canbridge to end; its exit code, CPU time and peak RSS."""
        self.process.wait()
        wall = time.monotonic() - self._started_monotonic
        code, cpu, maxrss = self._usage.read_text().split()
        return ChildRun(int(code), self.started, wall, float(cpu), int(maxrss) / 1024.0,
                        self.log.read_text(errors="replace"))


def run_canbridge(pipeline: Path, *args: str, log: Path,
                  env: dict[str, str] | None = None) -> ChildRun:
    return Child(pipeline, *args, log=log, env=env).reap()


def probe_env() -> dict[str, str]:
    """Environment that loads benchmarks/latency_probe.py as a plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
    env["CANBRIDGE_PLUGINS"] = "latency_probe"
    return env


def read_capture(path: Path) -> list[can.Message]:
    return list(can.LogReader(str(path)))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a value that occurred)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
            f"python-can {can.__version__}, {platform.system()} {platform.release()}")
