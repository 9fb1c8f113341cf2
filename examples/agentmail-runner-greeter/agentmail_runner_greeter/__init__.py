"""Greeter: an example agentmail-runner plugin, published as its own package.

It greets the sender of every new message by name, in the message's thread, and labels
the message ``greeted``. Everything a third-party plugin needs is here: the entry
point in pyproject.toml, a settings schema, two hooks and tests that use the fixtures
agentmail-runner's pytest plugin provides.
"""

from __future__ import annotations

from pydantic import Field

from runner import Action, AddLabels, Context, Event, PluginConfig, Reply, hookimpl

__all__ = ["GreeterSettings", "greeting_for"]


class GreeterSettings(PluginConfig):
    """The [plugins.greeter] table of plugins.toml."""

    greeting: str = Field(default="Hello", min_length=1)
    signature: str = Field(default="", description="A line added under the greeting.")
    label: str | None = Field(
        default="greeted", description="Label for greeted messages; none if empty."
    )


def greeting_for(event: Event, settings: GreeterSettings) -> str | None:
    """The greeting for the sender of the event's message, or None without one."""
    message = event.message
    sender = message.sender if message is not None else None
    if sender is None:
        return None
    text = f"{settings.greeting} {sender.name or sender.email}!"
    return f"{text}\n\n{settings.signature}" if settings.signature else text


@hookimpl
def subscriptions() -> list[str]:
    return ["message.received"]


@hookimpl
def config_schema() -> type[GreeterSettings]:
    return GreeterSettings


@hookimpl
def act(event: Event, context: Context) -> list[Action]:
    settings: GreeterSettings = context.config or GreeterSettings()
    text = greeting_for(event, settings)
    if text is None:
        context.log.info("the message names no sender; no greeting")
        return []
    actions: list[Action] = [Reply(text=text)]
    if settings.label:
        actions.append(AddLabels(labels=[settings.label]))
    return actions
