"""Template mode: a fixed reply chosen by the address that received the message."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from runner import Context, Event, Reply

from .config import Template

__all__ = ["choose", "receiving_addresses", "render", "template_reply"]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``{name}`` placeholders; unknown ones stay as written.

    A plain substitution rather than str.format, so that text from the email (a subject
    with braces, say) is only ever inserted, never interpreted.
    """
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def receiving_addresses(event: Event) -> list[str]:
    """The inbox and every To/Cc address of the event's message, in lower case."""
    message = event.message
    if message is None:
        return []
    found = [message.inbox_id] if message.inbox_id else []
    found += [a.email for a in (*message.to, *message.cc)]
    return [a.lower() for a in found]


def choose(templates: Iterable[Template], event: Event) -> Template | None:
    """The first template whose pattern matches an address that received the mail."""
    addresses = receiving_addresses(event)
    for template in templates:
        pattern = template.to.lower()
        if any(fnmatch.fnmatchcase(address, pattern) for address in addresses):
            return template
    return None


def template_reply(
    templates: Iterable[Template], event: Event, context: Context
) -> list[Reply]:
    message = event.message
    if message is None:
        return []
    template = choose(templates, event)
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
