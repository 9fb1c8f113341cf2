"""The pytest plugin shipped for plugin authors, and the example plugin package.

pytest loads ``runner.pytest_plugin`` through the ``pytest11`` entry point of the
installed runner, in this suite as in any plugin's: the fixtures are used here just as
an author would use them.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner import Event, PermanentError, Reply, Send, hookimpl
from runner.config import ConfigError
from runner.pytest_plugin import payload_shape
from runner.subscriptions import AGENTMAIL_EVENT_TYPES

EXAMPLE = "agentmail-runner-greeter"


class Echo:
    """Answers each new message with its subject; fails for the subject "boom"."""

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Any) -> list[Reply]:
        assert event.message is not None
        if event.message.subject == "boom":
            raise RuntimeError("the echo chamber collapsed")
        if event.message.subject == "never":
            raise PermanentError("this subject cannot be echoed")
        context.state.set("last", event.message.subject)
        return [Reply(text=f"echo: {event.message.subject}")]


def test_the_plugin_is_registered_for_pytest_through_pytest11(request):
    entry_points = importlib.metadata.entry_points(group="pytest11")

    assert "runner.pytest_plugin" in {ep.value for ep in entry_points}
    assert request.config.pluginmanager.has_plugin("agentmail_runner")


@pytest.mark.parametrize(
    "event_type", [t for t in AGENTMAIL_EVENT_TYPES if t != "domain.verified"]
)
def test_make_event_builds_each_message_event_type(make_event, event_type):
    first, second = make_event(event_type), make_event(event_type)

    event = Event(first)
    assert event.event_type == event_type
    assert event.inbox_id == "helpdesk@agentmail.to"
    assert first["event_id"] != second["event_id"]


def test_make_event_sets_fields_of_the_events_object(make_event):
    payload = make_event(
        subject="Refund", from_="Ada <ada@example.org>", to=["sales@agentmail.to"]
    )

    message = Event(payload).message
    assert message is not None
    assert (message.subject, message.sender.email) == ("Refund", "ada@example.org")
    assert payload["message"]["from_"] == "Ada <ada@example.org>"
    assert [a.email for a in message.to] == ["sales@agentmail.to"]
    assert payload["thread"]["subject"] == "Refund"
    assert make_event("domain.verified", status="verified")["domain"]["status"] == (
        "verified"
    )


def test_make_event_names_the_shapes_it_has(make_event):
    expected = re.escape("no payload shape for 'calendar.event.created'")
    with pytest.raises(ValueError, match=expected):
        make_event("calendar.event.created")


def test_payload_shapes_ship_inside_the_package():
    assert payload_shape("message.bounced")["bounce"]["type"] == "Transient"


def test_plugin_runner_loads_only_the_plugin_under_test(plugin_runner):
    runner = plugin_runner(Echo(), name="echo")

    assert [p.name for p in runner.runtime.plugins.plugins] == ["echo"]
    assert runner.runtime.plugins.failures == {}


def test_intended_actions_and_the_double_see_what_the_plugin_did(
    plugin_runner, make_event, intended_actions, agentmail_double
):
    runner = plugin_runner(Echo(), name="echo")

    first = runner.deliver(make_event(subject="one"))
    runner.deliver(make_event(subject="two"))
    runner.deliver(make_event("message.delivered"))

    assert (first.outcome, first.status) == ("accepted", "done")
    assert first.actions == [Reply(text="echo: one")]
    assert intended_actions == [Reply(text="echo: one"), Reply(text="echo: two")]
    assert [e.json["text"] for e in agentmail_double.sent] == ["echo: one", "echo: two"]
    assert runner.state.get("last") == "two"


def test_a_duplicate_delivery_adds_no_intended_action(
    plugin_runner, make_event, intended_actions, agentmail_double
):
    runner = plugin_runner(Echo(), name="echo")
    payload = make_event(subject="once")

    runner.deliver(payload)
    again = runner.deliver(payload)

    assert again.outcome == "duplicate"
    assert intended_actions == [Reply(text="echo: once")]
    assert len(agentmail_double.sent) == 1


def test_a_failing_hook_leaves_the_event_waiting_with_its_error(
    plugin_runner, make_event
):
    runner = plugin_runner(Echo(), name="echo")

    failed = runner.deliver(make_event(subject="boom"))
    dead = runner.deliver(make_event(subject="never"))

    assert failed.status == "pending"
    assert "RuntimeError: the echo chamber collapsed" in failed.errors[0]
    assert dead.status == "dead"
    assert dead.errors == ["PermanentError: this subject cannot be echoed"]


def test_dry_run_records_the_actions_without_sending(
    plugin_runner, make_event, intended_actions, agentmail_double
):
    runner = plugin_runner(Echo(), name="echo", dry_run=True)

    delivery = runner.deliver(make_event(subject="quiet"))

    assert intended_actions == [Reply(text="echo: quiet")]
    assert [a["status"] for a in delivery.story["actions"]] == ["recorded"]
    assert agentmail_double.sent == []


def test_a_plugin_without_a_name_needs_one(plugin_runner):
    with pytest.raises(TypeError, match=re.escape("pass name='...' to plugin_runner")):
        plugin_runner(Echo())


def test_actions_of_every_kind_compare_equal_after_the_round_trip(
    plugin_runner, make_event, intended_actions
):
    class Sender(Echo):
        @hookimpl
        def act(self, event: Event, context: Any) -> list[Send]:
            return [Send(to="boss@example.com", subject="FYI", text="x", cc=["a@b.c"])]

    plugin_runner(Sender(), name="sender").deliver(make_event())

    assert intended_actions == [
        Send(to=["boss@example.com"], subject="FYI", text="x", cc=["a@b.c"])
    ]


# -- the example package, installed as a third-party distribution -----------------


def test_the_example_packages_own_tests_pass():
    example = Path(__file__).parent.parent / "examples" / EXAMPLE
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AGENTMAIL_", "PYTEST_"))
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "5 passed" in finished.stdout


def example_installed() -> bool:
    try:
        importlib.metadata.distribution(EXAMPLE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_example = pytest.mark.skipif(
    not example_installed(),
    reason=f"{EXAMPLE} is not installed: .venv/bin/pip install "
    "./examples/agentmail-runner-greeter (.ci/run does)",
)


@needs_example
def test_the_example_package_is_run_through_its_entry_point(make_runtime, double):
    from tests.conftest import deliver, load_payload

    rt = make_runtime('[plugins.greeter]\ngreeting = "Welcome"\n')
    payload = load_payload("message-received.json")
    double.add_message("helpdesk@agentmail.to", payload["message"])

    deliver(rt, payload)
    rt.drain()

    [plugin] = rt.plugins.plugins
    assert (plugin.name, plugin.distribution) == ("greeter", EXAMPLE)
    [reply] = double.sent
    assert reply.json["text"] == "Welcome Pat Example!"
    [labelled] = double.label_updates
    assert labelled.add_labels == ("greeted",)


@needs_example
def test_plugin_runner_takes_an_installed_plugin_by_name(
    plugin_runner, make_event, intended_actions
):
    runner = plugin_runner("greeter", config={"label": ""})

    runner.deliver(make_event(from_="Grace Hopper <grace@example.org>"))

    assert intended_actions == [Reply(text="Hello Grace Hopper!")]


@needs_example
def test_a_bad_table_for_an_installed_plugin_names_the_key(plugin_runner):
    with pytest.raises(ConfigError, match=r"\[plugins.greeter\] greetin"):
        plugin_runner("greeter", config={"greetin": "Hi"})
