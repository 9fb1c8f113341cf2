"""The documentation says what the code does: every hook with its exact signature,
every command it shows, and a systemd unit that outwaits the drain."""

from __future__ import annotations

import inspect
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from runner import hookspecs
from runner.cli import cli
from runner.config import RunnerSettings
from runner.webhooks import check_webhook_url

DOCS = Path(__file__).parent.parent / "docs"
PLUGINS_MD = DOCS / "plugins.md"
DEPLOY_MD = DOCS / "deploy.md"

# Commands that plugins add through register_commands; not on the bare command.
PLUGIN_COMMANDS = {"suppressions", "routes"}


def hook_specs() -> dict[str, Callable[..., Any]]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, marker)
    }


def signature_line(name: str, fn: Callable[..., Any]) -> str:
    """``def name(arg: Type, ...) -> Return`` with the annotations as written."""
    signature = inspect.signature(fn)
    params = ", ".join(
        f"{p.name}: {_annotation(p.annotation)}" for p in signature.parameters.values()
    )
    return f"def {name}({params}) -> {_annotation(signature.return_annotation)}"


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else inspect.formatannotation(value)


def code_blocks(text: str, language: str = "") -> Iterator[str]:
    pattern = rf"^```{language}[^\n]*\n(.*?)^```"
    for match in re.finditer(pattern, text, flags=re.DOTALL | re.MULTILINE):
        yield match.group(1)


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def documented_hooks() -> dict[str, str]:
    """Hook name -> the signature line written in the Hooks section."""
    hooks = section(PLUGINS_MD.read_text(encoding="utf-8"), "Hooks")
    found = {}
    for block in code_blocks(hooks, "python"):
        for line in block.splitlines():
            match = re.fullmatch(r"def (\w+)\(.*\) -> .+", line.strip())
            if match and not line.rstrip().endswith(":"):
                found[match.group(1)] = line.strip()
    return found


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_is_documented_with_its_exact_signature(name):
    documented = documented_hooks()

    assert name in documented, f"docs/plugins.md does not document the hook {name}"
    assert documented[name] == signature_line(name, hook_specs()[name]), (
        f"docs/plugins.md shows another signature for {name}"
    )


def test_the_docs_describe_no_hook_that_does_not_exist():
    assert set(documented_hooks()) <= set(hook_specs())


def test_each_hook_has_its_own_heading():
    text = PLUGINS_MD.read_text(encoding="utf-8")

    headings = re.findall(r"^### (\w+)$", section(text, "Hooks"), flags=re.MULTILINE)

    assert headings == list(hook_specs())


def shown_commands() -> Iterator[tuple[str, list[str]]]:
    for doc in (PLUGINS_MD, DEPLOY_MD):
        text = doc.read_text(encoding="utf-8")
        for block in code_blocks(text, "sh"):
            for line in block.splitlines():
                if line.startswith("agentmail-runner "):
                    yield doc.name, shlex.split(line, comments=True)[1:]
        for snippet in re.findall(r"`(agentmail-runner [^`]+)`", text):
            yield doc.name, shlex.split(snippet)[1:]


def resolve(words: list[str]) -> click.Command | None:
    """The command the words name, skipping leading options."""
    command: click.Command = cli
    while words and isinstance(command, click.Group):
        word = words.pop(0)
        if word.startswith("-"):
            if word == "--config":
                words.pop(0)
            continue
        sub = command.commands.get(word)
        if sub is None:
            return None
        command = sub
    return command


def test_every_command_in_the_docs_exists():
    missing = [
        (doc, " ".join(words))
        for doc, words in shown_commands()
        if resolve(list(words)) is None and not PLUGIN_COMMANDS & set(words)
    ]

    assert missing == []


def test_the_systemd_unit_outwaits_the_drain_and_restarts_on_failure():
    units = [
        b
        for b in code_blocks(DEPLOY_MD.read_text(encoding="utf-8"), "ini")
        if "[Service]" in b
    ]
    assert units, "docs/deploy.md has no systemd unit"
    unit = units[0]

    stop_timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))

    assert stop_timeout > RunnerSettings().drain_seconds + 15
    assert re.search(r"^Restart=on-failure$", unit, re.MULTILINE)
    assert re.search(r"^KillSignal=SIGTERM$", unit, re.MULTILINE)
    assert " serve" in re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE).group(1)


def test_the_deploy_guide_registers_an_https_webhook():
    text = DEPLOY_MD.read_text(encoding="utf-8")

    urls = re.findall(r"webhooks register (\S+)", text)

    assert urls
    for url in urls:
        assert check_webhook_url(url) == url


def test_both_tls_proxies_forward_only_the_webhook_to_loopback():
    text = DEPLOY_MD.read_text(encoding="utf-8")
    nginx = next(b for b in code_blocks(text, "nginx"))
    caddy = next(b for b in code_blocks(text) if "reverse_proxy" in b)

    assert "location = /webhook" in nginx
    assert "proxy_pass http://127.0.0.1:3000;" in nginx
    assert "handle /webhook" in caddy
    assert "reverse_proxy 127.0.0.1:3000" in caddy
