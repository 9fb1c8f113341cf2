"""`agentmail-runner new-plugin NAME`: the package it writes works as written.

Installing the generated package into the shared virtual environment would change it
for every other test, and building it in a fresh one takes network and minutes. So
the package is checked in two honest, fast ways instead: its own tests run in a
subprocess, from its directory, exactly as its README says (the runner's pytest plugin
is picked up through the ``pytest11`` entry point of the installed runner); and the
entry point declared in its pyproject.toml, which packaging turns into the
distribution's entry_points.txt, is handed to the runner's loader the way
importlib.metadata would hand it over. The example package under examples/, which has
the same layout, is installed for real by .ci/run (see tests/test_pytest_plugin.py).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.config import load_config
from runner.loader import ENTRY_POINT_GROUP, load
from runner.scaffold import ScaffoldError, plugin_names, write_plugin
from tests.conftest import write_config


def new_plugin(*args: str) -> object:
    return CliRunner().invoke(cli, ["new-plugin", *args], catch_exceptions=False)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    target = tmp_path / "pkg"
    result = new_plugin("welcome_desk", "--directory", str(target))
    assert result.exit_code == 0, result.output
    return target


@pytest.fixture
def importable(package: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The generated package importable in this process, and forgotten after."""
    monkeypatch.syspath_prepend(str(package))
    yield package
    sys.modules.pop("agentmail_runner_welcome_desk", None)


def test_new_plugin_writes_the_package_and_says_what_next(package):
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*.*"))

    assert files == [
        "README.md",
        "agentmail_runner_welcome_desk/__init__.py",
        "pyproject.toml",
        "tests/test_welcome_desk.py",
    ]
    readme = (package / "README.md").read_text(encoding="utf-8")
    assert "[plugins.welcome_desk]" in readme


def test_the_generated_tests_pass_with_the_runners_pytest_plugin(package):
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AGENTMAIL_", "PYTEST_"))
    }

    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "3 passed" in finished.stdout


def test_the_entry_point_is_found_and_the_runner_loads_the_plugin(importable, tmp_path):
    project = tomllib.loads((importable / "pyproject.toml").read_text("utf-8"))
    declared = project["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == {"welcome_desk": "agentmail_runner_welcome_desk"}
    entry_point = importlib.metadata.EntryPoint(
        name="welcome_desk", value=declared["welcome_desk"], group=ENTRY_POINT_GROUP
    )
    config = load_config(
        write_config(tmp_path, '[plugins.welcome_desk]\ntext = "Hi"\n'), environ={}
    )

    plugins = load(config, strict=True, entry_points=[entry_point])

    [plugin] = plugins.plugins
    assert plugin.name == "welcome_desk"
    assert set(plugin.hooks) == {"subscriptions", "config_schema", "act"}
    assert plugin.subscriptions == ("message.received",)
    assert plugin.config.text == "Hi"


def test_the_generated_code_passes_the_projects_lint(package):
    ruff = Path(sys.executable).with_name("ruff")

    finished = subprocess.run(
        [str(ruff), "check", "--no-cache", "--select", "E,F,W,B,UP", str(package)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_a_bad_plugin_name_is_refused_with_an_example(tmp_path):
    result = new_plugin("9 lives", "--directory", str(tmp_path / "x"))

    assert result.exit_code == 2
    assert (
        "error: plugin name '9 lives': use letters, digits and underscores, starting "
        "with a letter, at most 50 characters (for example: greeter)" in result.output
    )
    assert not (tmp_path / "x").exists()


def test_an_existing_directory_is_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine", encoding="utf-8")

    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        write_plugin("greeter", tmp_path / "taken")

    assert (tmp_path / "taken" / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_names_are_normalised_from_what_people_type():
    assert plugin_names("agentmail-runner-Ticket-Router") == {
        "name": "ticket_router",
        "module": "agentmail_runner_ticket_router",
        "distribution": "agentmail-runner-ticket-router",
    }
