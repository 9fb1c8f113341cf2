"""The built-in plugins' commands print text from mail with its control characters
escaped, so that a subject or a bounce reason cannot steer the operator's terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner, Result

from runner import PluginState
from runner.loader import call_one
from tests.conftest import RuntimeFactory, load_payload

HOSTILE = "\x1b[31mRED\x1b[0m\x1b]0;TITLE\x07"
SHOWN = "\\x1b[31mRED\\x1b[0m\\x1b]0;TITLE\\x07"
CONTROL = {"\x1b", "\x07"}

ROUTER = """
[plugins.router]
[[plugins.router.rules]]
name = "red"
any = [{ field = "subject", contains = "RED" }]
labels = ["red"]
"""


def run(rt: Any, plugin: str, *args: str) -> Result:
    """Run a plugin's command on a fresh group, against the runtime's store, with
    the commands registered as `main()` registers them."""
    group = click.Group("agentmail-runner")
    impl = rt.plugins.implementation(plugin, "register_commands")
    call_one(
        impl,
        cli=group,
        config=rt.plugins.get(plugin).config,
        open_state=lambda: PluginState(rt.store, plugin),
    )
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def test_route_explain_shows_control_characters_of_the_subject_as_escapes(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    rt = make_runtime(ROUTER)
    payload = load_payload("message-received.json")
    payload["message"]["subject"] = HOSTILE
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(payload), encoding="utf-8")

    text = run(rt, "router", "route", "explain", str(path))
    as_json = run(rt, "router", "route", "explain", str(path), "--json")

    assert text.exit_code == 0, text.output
    assert not set(text.output) & CONTROL
    assert f"  subject  {SHOWN}" in text.stdout
    assert "  red (priority 0): MATCHED" in text.stdout
    assert not set(as_json.output) & CONTROL
    assert json.loads(as_json.stdout)["subject"] == HOSTILE


def test_suppressions_list_shows_control_characters_of_a_reason_as_escapes(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime("[plugins.bounce_tracker]\n")
    added = run(
        rt,
        "bounce_tracker",
        *("suppressions", "add", "pat@example.org", "--reason", HOSTILE),
    )
    assert added.exit_code == 0, added.output

    listed = run(rt, "bounce_tracker", "suppressions", "list")
    removed = run(rt, "bounce_tracker", "suppressions", "remove", "pat@example.org")

    assert listed.exit_code == 0, listed.output
    assert not set(listed.output) & CONTROL
    assert listed.stdout.startswith("pat@example.org  [manual]  since ")
    assert listed.stdout.endswith(f"  {SHOWN}\n")
    assert removed.stdout == f"removed pat@example.org (manual: {SHOWN})\n"
