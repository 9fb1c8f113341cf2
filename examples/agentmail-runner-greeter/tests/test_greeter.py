"""The greeter, run inside a real runner through agentmail-runner's pytest plugin."""

from __future__ import annotations

import agentmail_runner_greeter as greeter
import pytest

from runner import AddLabels, Reply
from runner.config import ConfigError


def test_the_sender_is_greeted_by_name_in_the_thread(
    plugin_runner, make_event, intended_actions, agentmail_double
):
    runner = plugin_runner(greeter, name="greeter", config={"greeting": "Hi"})

    delivery = runner.deliver(make_event(from_="Ada Lovelace <ada@example.org>"))

    assert delivery.status == "done"
    assert intended_actions == [
        Reply(text="Hi Ada Lovelace!"),
        AddLabels(labels=["greeted"]),
    ]
    [reply] = agentmail_double.sent
    assert reply.kind == "reply"
    assert reply.json["text"] == "Hi Ada Lovelace!"


def test_a_signature_goes_under_the_greeting_and_no_label_when_empty(
    plugin_runner, make_event, intended_actions
):
    runner = plugin_runner(
        greeter, name="greeter", config={"signature": "-- The team", "label": ""}
    )

    runner.deliver(make_event(from_="bob@example.org"))

    assert intended_actions == [Reply(text="Hello bob@example.org!\n\n-- The team")]


def test_the_same_event_delivered_twice_is_greeted_once(
    plugin_runner, make_event, agentmail_double
):
    runner = plugin_runner(greeter, name="greeter")
    event = make_event()

    first = runner.deliver(event)
    second = runner.deliver(event)

    assert (first.outcome, second.outcome) == ("accepted", "duplicate")
    assert len(agentmail_double.sent) == 1


def test_delivery_reports_are_not_greeted(plugin_runner, make_event, intended_actions):
    runner = plugin_runner(greeter, name="greeter")

    runner.deliver(make_event("message.delivered"))

    assert intended_actions == []


def test_a_misspelt_setting_names_the_plugin_and_the_key(plugin_runner):
    with pytest.raises(ConfigError, match=r"\[plugins.greeter\] greetin"):
        plugin_runner(greeter, name="greeter", config={"greetin": "Hi"})
