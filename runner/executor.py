"""Carry out the actions plugins intend, through the agentmail SDK, exactly once.

Every call carries an idempotency key derived from (event, plugin, stage, position),
so a retry of the SDK, of the job, or of the whole delivery asks AgentMail for the same
send and gets the first result back instead of a second email.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

import httpx

from runner.actions import (
    Action,
    AddLabels,
    Forward,
    HttpPost,
    RemoveLabels,
    Reply,
    Send,
)
from runner.context import quote_id
from runner.guard import AUTO_REPLY_HEADERS

if TYPE_CHECKING:
    from agentmail import AgentMail

    from runner.events import Event

__all__ = ["ActionFailed", "Executor", "idempotency_key", "reply_recipients"]

log = logging.getLogger("agentmail_runner.actions")


class ActionFailed(Exception):
    """An action did not happen; ``permanent`` says whether trying again can help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def idempotency_key(event_key: str, plugin: str, stage: str, position: int) -> str:
    """A key of AgentMail's alphabet, stable for one action of one event."""
    digest = hashlib.sha256(
        "\x1f".join((event_key, plugin, stage, str(position))).encode()
    ).hexdigest()
    return f"amr-{digest[:48]}"


def reply_recipients(event: Event, action: Reply) -> tuple[str, ...]:
    """Who a reply goes to: its own ``to``, else the Reply-To, else the sender."""
    if action.to:
        return action.to + action.cc
    message = event.message
    if message is None:
        return action.cc
    targets = message.reply_to or ((message.sender,) if message.sender else ())
    return tuple(a.email for a in targets) + action.cc


def _retryable_status(status: int | None) -> bool:
    return status is None or status in (408, 425, 429) or status >= 500


class Executor:
    """Executes one action at a time; the caller records the outcome."""

    def __init__(
        self,
        client: AgentMail | None,
        *,
        dry_run: bool,
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        self.client = client
        self.dry_run = dry_run or client is None
        self._options: Any = {"timeout_in_seconds": timeout, "max_retries": max_retries}
        self._timeout = timeout

    def execute(self, event: Event, action: Action, key: str) -> dict[str, Any]:
        """Do it (or, in dry-run, only describe it); raise ActionFailed otherwise."""
        if self.dry_run:
            return {"dry_run": True, "would": action.describe()}
        try:
            return self._dispatch(event, action, key)
        except ActionFailed:
            raise
        except httpx.TransportError as exc:
            raise ActionFailed(f"network: {exc!r}", permanent=False) from exc
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            body = getattr(exc, "body", None)
            if status is None:
                raise ActionFailed(
                    f"{type(exc).__name__}: {exc}", permanent=False
                ) from exc
            raise ActionFailed(
                f"AgentMail answered {status}: {_summary(body)}",
                permanent=not _retryable_status(status),
            ) from exc

    def _dispatch(self, event: Event, action: Action, key: str) -> dict[str, Any]:
        if isinstance(action, HttpPost):
            return self._post(action, key)
        assert self.client is not None
        messages = self.client.inboxes.messages
        if isinstance(action, Send):
            inbox = action.inbox_id or event.inbox_id
            if not inbox:
                raise ActionFailed("send: no inbox to send from", permanent=True)
            response = messages.send(
                quote_id(inbox),
                to=list(action.to),
                cc=list(action.cc) or None,
                bcc=list(action.bcc) or None,
                subject=action.subject,
                text=action.text,
                html=action.html,
                labels=list(action.labels) or None,
                headers=dict(action.headers) or None,
                idempotency_key=key,
                request_options=self._options,
            )
            return _sent(response)

        message = event.message
        if message is None or not message.message_id or not message.inbox_id:
            raise ActionFailed(
                f"{action.kind}: the event carries no message to act on",
                permanent=True,
            )
        inbox = quote_id(message.inbox_id)
        message_id = urllib.parse.quote(message.message_id, safe="")
        if isinstance(action, Reply):
            response = messages.reply(
                inbox,
                message_id,
                text=action.text,
                html=action.html,
                to=list(action.to) or None,
                cc=list(action.cc) or None,
                reply_all=action.reply_all or None,
                labels=list(action.labels) or None,
                headers={**dict(action.headers), **AUTO_REPLY_HEADERS},
                idempotency_key=key,
                request_options=self._options,
            )
            return _sent(response)
        if isinstance(action, Forward):
            response = messages.forward(
                inbox,
                message_id,
                to=list(action.to),
                subject=action.subject,
                text=action.text,
                labels=list(action.labels) or None,
                idempotency_key=key,
                request_options=self._options,
            )
            return _sent(response)
        if isinstance(action, AddLabels | RemoveLabels):
            adding = isinstance(action, AddLabels)
            messages.update(
                inbox,
                message_id,
                add_labels=list(action.labels) if adding else None,
                remove_labels=None if adding else list(action.labels),
                request_options=self._options,
            )
            return {"labels": list(action.labels)}
        raise ActionFailed(
            f"no executor for action kind {action.kind!r}", permanent=True
        )

    def _post(self, action: HttpPost, key: str) -> dict[str, Any]:
        headers = {**dict(action.headers), "Idempotency-Key": key}
        with httpx.Client(timeout=self._timeout, follow_redirects=False) as http:
            response = http.post(action.url, json=action.json, headers=headers)
        if 200 <= response.status_code < 300:
            return {"status": response.status_code}
        raise ActionFailed(
            f"{action.endpoint or 'endpoint'} answered {response.status_code}",
            permanent=not _retryable_status(response.status_code),
        )


def _sent(response: Any) -> dict[str, Any]:
    return {
        "message_id": getattr(response, "message_id", None),
        "thread_id": getattr(response, "thread_id", None),
    }


def _summary(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("name") or body)[:300]
    message = getattr(body, "message", None)
    return str(message or body)[:300]
