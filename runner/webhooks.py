"""The runner's webhook endpoint at AgentMail: register it, list webhooks, delete one.

Registering is idempotent: the webhook carries a ``client_id`` derived from its URL, so
AgentMail answers a repeated registration with the webhook it already has, and the
event types (or inboxes) are brought up to date when the plugins changed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

if TYPE_CHECKING:
    from agentmail import AgentMail

__all__ = [
    "Registration",
    "WebhookError",
    "check_webhook_url",
    "client_id_for",
    "delete_webhook",
    "find_webhooks",
    "is_loopback",
    "list_webhooks",
    "register_webhook",
]

_T = TypeVar("_T")


class WebhookError(Exception):
    """A webhook request cannot be made or was refused; the message says why."""


@dataclass(frozen=True)
class Registration:
    webhook: Any
    outcome: str  # "created", "unchanged" or "updated"


def is_loopback(host: str) -> bool:
    """Whether a host name or address stays on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_webhook_url(url: str) -> str:
    """The URL if AgentMail may be told to deliver to it; WebhookError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(
            f"{url!r} is not an http(s) URL: write the full endpoint, for example "
            "https://runner.example.com/webhook"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise WebhookError(
            f"refusing {url}: AgentMail must deliver over HTTPS; put a TLS-terminating "
            "proxy in front of the runner (docs/deploy.md) and register its https:// "
            "URL. Plain http is accepted only for a loopback host."
        )
    return url


def client_id_for(url: str) -> str:
    """A stable client id for a webhook URL, so registering it twice is harmless."""
    parts = urllib.parse.urlsplit(url)
    canonical = urllib.parse.urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, "")
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"agentmail-runner-{digest[:32]}"


def _call(what: str, fn: Callable[[], _T]) -> _T:
    """Call the SDK; its errors become a WebhookError that names the request."""
    try:
        return fn()
    except httpx.TransportError as exc:
        raise WebhookError(f"{what}: cannot reach AgentMail: {exc}") from exc
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        if status is None:
            raise
        body = getattr(exc, "body", None)
        detail = body.get("message") if isinstance(body, dict) else body
        raise WebhookError(f"{what}: AgentMail answered {status}: {detail}") from exc


def list_webhooks(client: AgentMail) -> Iterator[Any]:
    """Every webhook of the account, page after page."""
    token: str | None = None
    while True:
        page = _call("listing webhooks", _page_of(client, token))
        yield from page.webhooks
        token = page.next_page_token
        if not token:
            return


def _page_of(client: AgentMail, token: str | None) -> Callable[[], Any]:
    return lambda: client.webhooks.list(limit=100, page_token=token)


def find_webhooks(client: AgentMail, ref: str) -> list[Any]:
    """Webhooks named by an id, or registered for a URL."""
    if "://" not in ref:
        return [w for w in list_webhooks(client) if w.webhook_id == ref]
    wanted = client_id_for(ref)
    return [w for w in list_webhooks(client) if w.client_id == wanted or w.url == ref]


def register_webhook(
    client: AgentMail,
    url: str,
    *,
    event_types: Sequence[str],
    inbox_ids: Sequence[str] = (),
) -> Registration:
    """Create the webhook for ``url``, or bring the existing one up to date."""
    check_webhook_url(url)
    if not event_types:
        raise WebhookError(
            "no event types to register: enable a plugin in plugins.toml, or pass "
            "--event-type"
        )
    client_id = client_id_for(url)
    existing = next(
        (w for w in list_webhooks(client) if w.client_id == client_id), None
    )
    if existing is None:
        selection: dict[str, Any] = {"inbox_ids": list(inbox_ids)} if inbox_ids else {}
        created = _call(
            f"registering {url}",
            lambda: client.webhooks.create(
                url=url,
                event_types=list(event_types),
                client_id=client_id,
                **selection,
            ),
        )
        return Registration(created, "created")
    changes = _changes(existing, event_types, inbox_ids)
    if not changes:
        return Registration(existing, "unchanged")
    updated = _call(
        f"updating {existing.webhook_id}",
        lambda: client.webhooks.update(existing.webhook_id, **changes),
    )
    return Registration(updated, "updated")


def _changes(
    webhook: Any, event_types: Sequence[str], inbox_ids: Sequence[str]
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if set(webhook.event_types or ()) != set(event_types):
        changes["event_types"] = list(event_types)
    if inbox_ids:
        current = set(webhook.inbox_ids or ())
        added = [i for i in inbox_ids if i not in current]
        removed = sorted(current - set(inbox_ids))
        if added:
            changes["add_inbox_ids"] = added
        if removed:
            changes["remove_inbox_ids"] = removed
    return changes


def delete_webhook(client: AgentMail, webhook_id: str) -> None:
    _call(f"deleting {webhook_id}", lambda: client.webhooks.delete(webhook_id))
