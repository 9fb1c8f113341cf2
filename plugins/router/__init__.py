"""Keyword router: ordered rules that classify new mail and act on it.

Each rule tests the subject, the new content of the body, the addresses, attachment
names, text extracted from PDFs, labels or headers, and when it holds adds labels,
forwards, replies from a template, posts to a configured endpoint (Slack, any JSON
endpoint, a GitHub issue) or names a route for the plugins of later stages. Rules run
in priority order, and one with ``stop = true`` ends the evaluation when it matches,
as in Mailgun routes and Sieve scripts.

The router runs in stage ``route`` and puts ``"matched_rules"`` (the names of the
rules that matched) and ``"route"`` (when a matched rule names one) on the context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner import Action, Context, Event, Message, hookimpl, html_to_text

from .config import RouterConfig, walk
from .planning import plan
from .rules import Facts, decide

if TYPE_CHECKING:
    import click

__all__ = ["RouterConfig"]


@hookimpl
def subscriptions() -> list[str]:
    return ["message.received"]


@hookimpl
def config_schema() -> type[RouterConfig]:
    return RouterConfig


@hookimpl
def route(event: Event, context: Context) -> list[Action]:
    config: RouterConfig = context.config or RouterConfig()
    message = event.message
    if message is None:
        return []
    facts = Facts.of(
        message, body=_body(config, message, context), pdf_text=_pdf_text(context)
    )
    decision = decide(config, facts)
    matched = [rule.name for rule in decision.matched]
    context.put("matched_rules", matched)
    if decision.route is not None:
        context.put("route", decision.route)
    planned = plan(config, decision, event, message, facts)
    context.log.info(
        "matched rules: %s; route: %s; %d action(s)",
        ", ".join(matched) or "none",
        decision.route or "none",
        len(planned),
    )
    return [p.action for p in planned]


@hookimpl
def register_commands(cli: click.Group, config: RouterConfig | None) -> None:
    from .explain import add_commands

    add_commands(cli, config or RouterConfig())


def _pdf_text(context: Context) -> str:
    value = context.get("pdf_text")
    return value if isinstance(value, str) else ""


def _body(config: RouterConfig, message: Message, context: Context) -> str:
    """The new content; fetched when AgentMail left a large body out of the event
    and a rule or a template needs it."""
    if not (message.body_missing and _reads_body(config) and context.api.available):
        return message.body_text
    try:
        fetched = context.api.message(message.message_id)
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        if not (isinstance(status, int) and 400 <= status < 500 and status != 429):
            raise  # a network error or 5xx: the runner retries the call later
        # Refused for good (the message is gone, say): route on what arrived.
        context.log.warning(
            "AgentMail answered %s for the message body; routing without it", status
        )
        return ""
    return (
        getattr(fetched, "extracted_text", None)
        or getattr(fetched, "text", None)
        or html_to_text(getattr(fetched, "html", None) or "")
    )


def _reads_body(config: RouterConfig) -> bool:
    leaves = (match for rule in config.rules for match in walk(rule.conditions))
    tested = any(match.field == "body" for match in leaves)
    return tested or any("{body}" in template for template in config.templates())
