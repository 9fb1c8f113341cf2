"""Auto-responder: answer new mail in its thread.

Template mode (the default) answers from templates chosen by the address that received
the message, as in AgentMail's support/sales example; a message that no template
matches gets no reply. Every reply still passes the runner's send guard.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from pydantic import Field

from runner import Context, Event, PluginConfig, Reply, hookimpl

__all__ = ["AutoResponderConfig", "Template", "render"]


class Template(PluginConfig):
    """One reply template and the recipient addresses it answers for."""

    to: str = Field(
        default="*",
        description="Glob on the receiving address, e.g. 'support@*'; '*' for any.",
    )
    text: str = Field(min_length=1)
    html: str | None = None


class AutoResponderConfig(PluginConfig):
    templates: list[Template] = Field(default_factory=list)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``{name}`` placeholders; unknown ones stay as written.

    A plain substitution rather than str.format, so that text from the email (a subject
    with braces, say) is only ever inserted, never interpreted.
    """
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _receiving_addresses(event: Event) -> list[str]:
    message = event.message
    if message is None:
        return []
    found = [message.inbox_id] if message.inbox_id else []
    found += [a.email for a in (*message.to, *message.cc)]
    return [a.lower() for a in found]


def choose(templates: Iterable[Template], event: Event) -> Template | None:
    """The first template whose pattern matches an address that received the mail."""
    addresses = _receiving_addresses(event)
    for template in templates:
        pattern = template.to.lower()
        if any(fnmatch.fnmatchcase(address, pattern) for address in addresses):
            return template
    return None


@hookimpl
def subscriptions() -> list[str]:
    return ["message.received"]


@hookimpl
def config_schema() -> type[AutoResponderConfig]:
    return AutoResponderConfig


@hookimpl
def act(event: Event, context: Context) -> list[Reply]:
    config: AutoResponderConfig = context.config or AutoResponderConfig()
    message = event.message
    if message is None:
        return []
    template = choose(config.templates, event)
    if template is None:
        context.log.info("no template for %s; no reply", message.inbox_id)
        return []
    sender = message.sender
    values = {
        "subject": message.subject or "(no subject)",
        "sender_name": (sender.name or sender.email) if sender else "",
        "sender_email": sender.email if sender else "",
        "inbox": message.inbox_id,
    }
    html = render(template.html, values) if template.html else None
    return [Reply(text=render(template.text, values), html=html)]
