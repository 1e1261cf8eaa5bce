"""A benchmark-only sink, `latency-probe`: how long a frame takes to reach the sinks.

Every update carries the pipeline time of the frame it came from: live, the moment the
bus reader thread handed the frame over (`Engine._deliver` stamps it). Listed last among
sinks that take the same input, the probe is called after the others have had the
update, so `clock.now() - update.timestamp` here is the delay from a frame entering
canbridge to its signal having reached every sink: queue hand-over, the engine thread
waking, decoding, the transforms and the sinks' own `on_update`.

Loaded without installing: PYTHONPATH=benchmarks CANBRIDGE_PLUGINS=latency_probe.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Any

from canbridge import REQUIRED, Context, Option, Path, Sink, Update, hookimpl


class LatencyProbe(Sink):
    type_name = "latency-probe"
    summary = "records how long each update took from its frame's arrival (benchmarks)"
    options = (
        Option("path", Path(non_empty=True), REQUIRED,
               help="file the updates' times and delays (seconds, one pair per line) are "
                    "written to at stop"),
    )

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self.delays: list[tuple[float, float]] = []

    def on_update(self, update: Update) -> None:
        self.delays.append((update.timestamp, self.clock.now() - update.timestamp))

    def stop(self) -> None:
        lines = "".join(f"{t:.6f} {d:.9f}\n" for t, d in self.delays)
        FilePath(self.config["path"]).write_text(lines)

    def status(self) -> dict[str, Any]:
        return {"state": "ok", "updates": len(self.delays), "errors": self.errors}


@hookimpl
def canbridge_component_types() -> list[type]:
    return [LatencyProbe]
