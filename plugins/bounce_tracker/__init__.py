"""Bounce tracker: stop mailing addresses that bounce or complain, and pause an inbox
whose bounce or complaint rate threatens its sending reputation.

It watches the delivery outcomes AgentMail reports (message.sent, delivered, bounced,
complained, rejected), keeps a suppression list in its own state, and vetoes every
email, from any plugin, to a suppressed address or from a paused inbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from runner import Context, Event, PluginState, Send, SendProposal, hookimpl

from .addresses import suppression_key
from .book import Book, format_time, resume_command
from .commands import suppressions_group
from .settings import BounceTrackerConfig, ReputationGuard
from .tracking import EVENT_TYPES, handle

__all__ = ["BounceTrackerConfig", "ReputationGuard", "suppression_key"]


def _book(context: Context) -> Book:
    return Book(context.state, context.config or BounceTrackerConfig())


@hookimpl
def subscriptions() -> list[str]:
    return list(EVENT_TYPES)


@hookimpl
def config_schema() -> type[BounceTrackerConfig]:
    return BounceTrackerConfig


@hookimpl
def observe(event: Event, context: Context) -> None:
    outcomes = handle(event, _book(context), time.time(), context.log)
    if outcomes:
        context.put("bounce_tracker", outcomes)


@hookimpl
def veto_send(proposal: SendProposal, context: Context) -> str | None:
    book = _book(context)
    inbox = proposal.inbox_id
    if isinstance(proposal.action, Send) and proposal.action.inbox_id:
        inbox = proposal.action.inbox_id
    paused = book.pause(inbox) if inbox else None
    if paused is not None:
        return (
            f"automatic sends from {inbox} are paused since "
            f"{format_time(float(paused.get('since') or 0))}: "
            f"{paused.get('reason', '')}; resume with `{resume_command(inbox)}`"
        )
    for recipient in proposal.recipients:
        suppression = book.suppression(suppression_key(recipient))
        if suppression is not None:
            return suppression.describe()
    return None


@hookimpl
def register_commands(
    cli: click.Group, config: Any, open_state: Callable[[], PluginState]
) -> None:
    cli.add_command(suppressions_group(config or BounceTrackerConfig(), open_state))
