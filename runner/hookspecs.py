"""Every hook a plugin may implement.

Hooks are called with keyword arguments, and an implementation may accept any subset of
them. The event hooks run in four stages, in this order: ``enrich``, ``route``, ``act``,
``observe``; within a stage, plugins run in the order plugins.toml lists them. Each call
is isolated: its own exception handling, its own time budget and its own ledger row, so
that a retry re-runs only the calls that did not succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from pydantic import BaseModel

    from runner.actions import Action
    from runner.context import Context, PluginState, SendProposal
    from runner.events import Event

PROJECT = "agentmail_runner"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

STAGES = ("enrich", "route", "act", "observe")


@hookspec
def subscriptions() -> Iterable[str]:
    """Event types this plugin receives, as dotted names with ``*`` wildcards."""
    raise NotImplementedError


@hookspec(firstresult=True)
def config_schema() -> type[BaseModel] | None:
    """The pydantic model that validates this plugin's ``[plugins.NAME]`` table."""
    raise NotImplementedError


@hookspec
def enrich(event: Event, context: Context) -> Iterable[Action] | None:
    """First stage: add facts to the context (``context.put``) for later stages."""
    raise NotImplementedError


@hookspec
def route(event: Event, context: Context) -> Iterable[Action] | None:
    """Second stage: classify the event; return actions such as labels or forwards."""
    raise NotImplementedError


@hookspec
def act(event: Event, context: Context) -> Iterable[Action] | None:
    """Third stage: decide what to do about the event; return the intended actions."""
    raise NotImplementedError


@hookspec
def observe(event: Event, context: Context) -> Iterable[Action] | None:
    """Last stage: record what happened (state, metrics); usually returns nothing."""
    raise NotImplementedError


@hookspec
def veto_send(proposal: SendProposal, context: Context) -> str | None:
    """Before an email leaves: return a reason to stop it, or None to let it pass."""
    raise NotImplementedError


@hookspec
def register_commands(
    cli: click.Group, config: Any, open_state: Callable[[], PluginState]
) -> None:
    """Add click commands to ``agentmail-runner``; ``open_state()`` opens the store."""
    raise NotImplementedError
