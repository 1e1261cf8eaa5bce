"""The example plugin package (examples/plugins/canbridge-example) and the ACME package that
docs/plugins.md builds, installed the way a user installs a third-party plugin: pip, then
found through the `canbridge.plugins` entry point.

pip installs each into a folder of its own (--target) that the subprocesses get on
PYTHONPATH, so the test venv stays as it was and no other test ever sees these plugins.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import can
import pytest
import tomli_w
from conftest import REPO, SAMPLE

EXAMPLE = REPO / "examples/plugins/canbridge-example"
DOCS = REPO / "docs/plugins.md"


def pip_install(source: Path, site: Path) -> dict[str, str]:
    """Install the package in `source` into `site`; the environment that sees it."""
    # Offline: the build backend is this venv's setuptools (a test extra), and canbridge
    # itself is this venv's (--no-deps).
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-index", "--no-build-isolation", "--target", str(site),
                           str(source)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of the example's sources (pip builds inside the tree it is given) and the
    environment in which its pip-installed copy is importable."""
    folder = tmp_path_factory.mktemp("example")
    source = folder / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return source, pip_install(source, folder / "site")


def run(env: dict[str, str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60, check=False)


def test_canbridge_finds_the_installed_plugin(example: tuple[Path, dict[str, str]]) -> None:
    _, env = example
    done = run(env, "-m", "canbridge", "plugins")
    assert done.returncode == 0, done.stderr
    assert "example (canbridge_example.derate 0.1.0)\n  transform 'derate-when-hot': lowers " \
           "the charge current limit linearly while the battery temperature is high" in done.stdout
    assert "    derate_from = 45  (number) temperature (°C) above which the charge current " \
           "limit is lowered" in done.stdout
    assert "BROKEN" not in done.stdout


def test_the_examples_own_tests_pass_against_the_installed_package(
        example: tuple[Path, dict[str, str]]) -> None:
    source, env = example
    done = run(env, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout


def pipeline(folder: Path, derate: dict[str, float]) -> Path:
    doc = {
        "status": {"file": str(folder / "status.json")},
        "buses": {
            "battery": {"interface": "replay", "path": str(SAMPLE), "speed": "max"},
            "inverter": {"interface": "virtual", "channel": f"example-{uuid.uuid4()}",
                         "record": str(folder / "inverter.log")},
        },
        "sources": {"lynk": {"type": "discover-lynk2", "bus": "battery"}},
        "transforms": {"derate": {"type": "derate-when-hot", "inputs": ["lynk"], **derate}},
        "sinks": {"inverter": {"type": "pylontech", "inputs": ["derate"], "bus": "inverter"}},
    }
    path = folder / "pipeline.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def test_in_a_pipeline_the_inverter_gets_the_derated_charge_limit(
        example: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _, env = example
    # The capture's battery is at 28 °C with CCL = DCL = 282 A: derating from 20 °C to 0 A
    # at 40 °C leaves (40 - 28) / (40 - 20) = 60 % of the charge limit, 169.2 A.
    path = pipeline(tmp_path, {"derate_from": 20.0, "zero_at": 40.0})
    done = run(env, "-m", "canbridge", "run", str(path))
    assert done.returncode == 0, done.stdout + done.stderr

    limits = [(int.from_bytes(msg.data[2:4], "little", signed=True),
               int.from_bytes(msg.data[4:6], "little", signed=True))
              for msg in can.LogReader(str(tmp_path / "inverter.log"))
              if msg.arbitration_id == 0x351 and not msg.is_rx]
    components = json.loads((tmp_path / "status.json").read_text())["components"]
    # Every burst, from the first on: CCL 169.2 A, DCL untouched at 282.0 A (0.1 A units).
    assert limits == [(1692, 2820)] * components["inverter"]["bursts"]
    assert len(limits) >= 5
    # The capture's first limit comes before its first temperature: held back, not passed.
    derate = components["derate"]
    assert {key: derate[key] for key in ("state", "factor", "temperature", "held_back")} == {
        "state": "derating", "factor": 0.6, "temperature": 28.0, "held_back": 1}


def test_a_bad_option_of_the_plugin_is_reported_by_validate(
        example: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _, env = example
    path = pipeline(tmp_path, {"derate_from": 45.0, "zero_at": 40.0})
    done = run(env, "-m", "canbridge", "validate", str(path))
    assert done.returncode == 2
    assert "transforms.derate.zero_at: must be above derate_from (40 is not above 45)" in \
           done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_the_acme_package_of_the_docs_installs_registers_and_passes_its_tests(
        tmp_path: Path) -> None:
    source = tmp_path / "acme"
    files = re.findall(r"^File `([^`]+)`:\n\n```\w*\n(.*?)^```", DOCS.read_text(), re.M | re.S)
    assert sorted(name for name, _ in files) == [
        "pyproject.toml", "src/canbridge_acme/acme.dbc", "src/canbridge_acme/acme_inverter.dbc",
        "src/canbridge_acme/battery.py", "src/canbridge_acme/inverter.py",
        "tests/test_battery.py", "tests/test_inverter.py"]
    for name, text in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    (source / "src/canbridge_acme/__init__.py").write_text("")
    env = pip_install(source, tmp_path / "site")

    done = run(env, "-m", "canbridge", "plugins")
    assert "acme_bms (canbridge_acme.battery 0.1.0)\n  source 'acme-bms'" in done.stdout
    assert "acme_inverter (canbridge_acme.inverter 0.1.0)\n  sink 'acme-inverter'" in done.stdout
    done = run(env, "-m", "canbridge", "dbc")
    assert re.search(r"^acme: 2 frames .*/canbridge_acme/acme.dbc$", done.stdout, re.M)
    assert re.search(r"^acme_inverter: 1 frames ", done.stdout, re.M)

    done = run(env, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
