"""Turn the matched rules into the actions the runner executes.

Posts become ``runner.HttpPost`` actions aimed only at the endpoints the configuration
defines; the runner adds the idempotency key and retries what failed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from runner import Action, AddLabels, Event, Forward, HttpPost, Message, Reply

from .config import (
    Endpoint,
    GitHubEndpoint,
    Post,
    RouterConfig,
    Rule,
    SlackEndpoint,
)
from .rules import Decision, Facts

__all__ = ["Planned", "plan", "render", "template_values"]

# GitHub refuses longer issue titles and bodies.
_ISSUE_TITLE_LIMIT = 256
_ISSUE_BODY_LIMIT = 65536
_GITHUB_HEADERS = {
    "Accept": "application/vnd.github+json",
    "X-GitHub-Api-Version": "2022-11-28",
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Slack reads these three characters as markup in any text it is sent.
_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


@dataclass(frozen=True)
class Planned:
    """One action and the rule that asked for it."""

    rule: str
    action: Action


def render(template: str, values: Mapping[str, str], *, slack: bool = False) -> str:
    """Fill ``{name}`` placeholders by plain substitution.

    Not str.format: text from the email (a subject with braces, say) is only ever
    inserted, never interpreted. For Slack, inserted text is escaped so that a
    sender cannot inject mentions or links.
    """

    def value(found: re.Match[str]) -> str:
        text = values.get(found.group(1))
        if text is None:
            return found.group(0)
        return text.translate(_SLACK_ESCAPES) if slack else text

    return _PLACEHOLDER.sub(value, template)


def template_values(
    event: Event, message: Message, facts: Facts, *, rule: str, route: str | None
) -> dict[str, str]:
    sender = facts.sender[0] if facts.sender else None
    return {
        "subject": facts.subject or "(no subject)",
        "sender": str(sender) if sender else "",
        "sender_email": sender.email if sender else "",
        "sender_name": (sender.name or sender.email) if sender else "",
        "inbox": message.inbox_id,
        "to": ", ".join(str(a) for a in facts.recipients),
        "body": facts.body,
        "preview": str(message.raw.get("preview") or ""),
        "labels": ", ".join(facts.labels),
        "attachments": ", ".join(facts.attachments),
        "rule": rule,
        "route": route or "",
        "event_id": event.event_id,
        "message_id": message.message_id,
        "thread_id": message.thread_id,
    }


def plan(
    config: RouterConfig,
    decision: Decision,
    event: Event,
    message: Message,
    facts: Facts,
) -> list[Planned]:
    """The actions of every matched rule, in rule order; exact repeats dropped, so
    that two rules forwarding to one address send one email."""
    route = decision.route
    planned: list[Planned] = []
    seen: set[str] = set()
    for rule in decision.matched:
        values = template_values(event, message, facts, rule=rule.name, route=route)
        for action in _rule_actions(config, rule, values, event, message, facts):
            identity = json.dumps(action.to_dict(), sort_keys=True, default=str)
            if identity not in seen:
                seen.add(identity)
                planned.append(Planned(rule.name, action))
    return planned


def _rule_actions(
    config: RouterConfig,
    rule: Rule,
    values: dict[str, str],
    event: Event,
    message: Message,
    facts: Facts,
) -> Iterator[Action]:
    if rule.labels:
        yield AddLabels(labels=rule.labels)
    if rule.forward:
        yield Forward(to=rule.forward)
    if rule.reply is not None:
        yield Reply(text=render(rule.reply, values))
    for post in rule.post:
        endpoint = config.endpoints[post.endpoint]
        yield _post_action(post, endpoint, values, event, message, facts)


def _post_action(
    post: Post,
    endpoint: Endpoint,
    values: dict[str, str],
    event: Event,
    message: Message,
    facts: Facts,
) -> HttpPost:
    headers = {k: v.get_secret_value() for k, v in endpoint.headers.items()}
    if isinstance(endpoint, GitHubEndpoint):
        return _issue(post, endpoint, values, headers)
    if endpoint.token is not None:
        headers["Authorization"] = f"Bearer {endpoint.token.get_secret_value()}"
    text_template = post.text or endpoint.text
    document: dict[str, Any]
    if isinstance(endpoint, SlackEndpoint):
        document = {"text": render(text_template, values, slack=True)}
    else:
        document = _json_document(
            render(text_template, values), values, event, message, facts
        )
    return HttpPost(
        url=endpoint.url.get_secret_value(),
        json=document,
        headers=headers,
        endpoint=post.endpoint,
    )


def _issue(
    post: Post,
    endpoint: GitHubEndpoint,
    values: dict[str, str],
    headers: dict[str, str],
) -> HttpPost:
    labels = post.labels if post.labels is not None else endpoint.labels
    title = render(post.title or endpoint.title, values)
    body = render(post.body or endpoint.body, values)
    return HttpPost(
        url=f"{endpoint.api_url}/repos/{endpoint.repo}/issues",
        json={
            "title": title[:_ISSUE_TITLE_LIMIT],
            "body": body[:_ISSUE_BODY_LIMIT],
            "labels": list(labels),
        },
        headers={
            **headers,
            **_GITHUB_HEADERS,
            "Authorization": f"Bearer {endpoint.token.get_secret_value()}",
        },
        endpoint=post.endpoint,
    )


def _json_document(
    text: str,
    values: dict[str, str],
    event: Event,
    message: Message,
    facts: Facts,
) -> dict[str, Any]:
    return {
        "text": text,
        "rule": values["rule"],
        "route": values["route"] or None,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "message": {
            "inbox_id": message.inbox_id,
            "thread_id": message.thread_id,
            "message_id": message.message_id,
            "subject": facts.subject,
            "from": values["sender_email"],
            "to": [a.email for a in facts.recipients],
            "labels": list(facts.labels),
            "attachments": list(facts.attachments),
        },
    }
