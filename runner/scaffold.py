"""``agentmail-runner new-plugin NAME``: write a ready plugin package.

The package has a pyproject with the ``agentmail_runner`` entry point, a plugin module
with one event hook and a configuration schema, a README, and tests that drive the
plugin through a real runner with the fixtures of ``runner.pytest_plugin``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
import string
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Scaffold", "ScaffoldError", "plugin_names", "write_plugin"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,49}")

# Template file -> path inside the package; both may use the template's variables.
_FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "plugin.py.tmpl": "$module/__init__.py",
    "test_plugin.py.tmpl": "tests/test_$name.py",
}


class ScaffoldError(Exception):
    """The package cannot be written; the message names the problem and the fix."""


@dataclass(frozen=True)
class Scaffold:
    """What was written: the package directory and its files."""

    directory: Path
    files: tuple[Path, ...]
    name: str
    module: str
    distribution: str


def plugin_names(name: str) -> dict[str, str]:
    """The plugin's entry-point name, module and distribution names."""
    plugin = name.strip().lower().replace("-", "_")
    plugin = plugin.removeprefix("agentmail_runner_")
    if not _NAME.fullmatch(plugin):
        raise ScaffoldError(
            f"plugin name {name!r}: use letters, digits and underscores, starting "
            "with a letter, at most 50 characters (for example: greeter)"
        )
    return {
        "name": plugin,
        "module": f"agentmail_runner_{plugin}",
        "distribution": "agentmail-runner-" + plugin.replace("_", "-"),
    }


def _runner_version() -> str:
    try:
        return importlib.metadata.version("agentmail-runner")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def write_plugin(name: str, directory: Path | None = None) -> Scaffold:
    """Write the package into ``directory`` (default: ./DISTRIBUTION), which must not
    exist yet or be empty."""
    names = plugin_names(name)
    target = directory if directory is not None else Path(names["distribution"])
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(
            f"{target} already exists and is not empty: choose another directory "
            "with --directory, or remove it"
        )
    values = {**names, "runner_version": _runner_version()}
    templates = importlib.resources.files("runner") / "templates_plugin"
    written = []
    for template_name, relative in _FILES.items():
        text = (templates / template_name).read_text(encoding="utf-8")
        path = target / string.Template(relative).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(string.Template(text).substitute(values), encoding="utf-8")
        written.append(path)
    return Scaffold(
        directory=target,
        files=tuple(written),
        name=names["name"],
        module=names["module"],
        distribution=names["distribution"],
    )
