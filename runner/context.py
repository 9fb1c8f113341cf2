"""What a plugin sees while it handles an event.

A plugin reads through its context (the event, read-only AgentMail calls, its own state,
a logger bound to the event id, what earlier stages found) and returns actions. It never
holds a client that can send.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agentmail import AgentMail

    from runner.actions import Action
    from runner.events import Event

__all__ = [
    "AgentMailReader",
    "Context",
    "DownloadTooLarge",
    "PluginState",
    "SendProposal",
    "StateBackend",
]


class StateBackend(Protocol):
    def state_get(self, plugin: str, key: str) -> Any: ...
    def state_set(self, plugin: str, key: str, value: Any) -> None: ...
    def state_delete(self, plugin: str, key: str) -> bool: ...
    def state_items(self, plugin: str, prefix: str = "") -> list[tuple[str, Any]]: ...


class PluginState:
    """A plugin's own durable key-value state (JSON values), shared across events."""

    def __init__(self, backend: StateBackend, plugin: str) -> None:
        self._backend = backend
        self._plugin = plugin

    def get(self, key: str, default: Any = None) -> Any:
        value = self._backend.state_get(self._plugin, key)
        return default if value is None else value

    def set(self, key: str, value: Any) -> None:
        self._backend.state_set(self._plugin, key, value)

    def delete(self, key: str) -> bool:
        return self._backend.state_delete(self._plugin, key)

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        return self._backend.state_items(self._plugin, prefix)


class DownloadTooLarge(Exception):
    """An attachment download passed the size the caller allowed."""


def quote_id(value: str) -> str:
    """Escape an id for one path segment (the SDK leaves ``/``, ``?`` and ``#``)."""
    return urllib.parse.quote(value, safe="@")


class AgentMailReader:
    """Read-only AgentMail calls for plugins: messages, threads, attachments."""

    def __init__(
        self, client: AgentMail | None, *, inbox_id: str, timeout: float = 30.0
    ) -> None:
        self._client = client
        self._inbox_id = inbox_id
        self._timeout = timeout

    @property
    def available(self) -> bool:
        return self._client is not None

    def _api(self) -> AgentMail:
        if self._client is None:
            raise RuntimeError(
                "no AgentMail API key is configured: set AGENTMAIL_API_KEY to read "
                "messages, threads or attachments"
            )
        return self._client

    def _options(self) -> Any:
        return {"timeout_in_seconds": self._timeout, "max_retries": 2}

    def message(self, message_id: str, inbox_id: str | None = None) -> Any:
        return self._api().inboxes.messages.get(
            quote_id(inbox_id or self._inbox_id),
            urllib.parse.quote(message_id, safe=""),
            request_options=self._options(),
        )

    def thread(self, thread_id: str, inbox_id: str | None = None) -> Any:
        return self._api().inboxes.threads.get(
            quote_id(inbox_id or self._inbox_id),
            quote_id(thread_id),
            request_options=self._options(),
        )

    def attachment(
        self, message_id: str, attachment_id: str, inbox_id: str | None = None
    ) -> Any:
        """Attachment metadata, with a ``download_url`` valid for about an hour."""
        return self._api().inboxes.messages.get_attachment(
            quote_id(inbox_id or self._inbox_id),
            urllib.parse.quote(message_id, safe=""),
            quote_id(attachment_id),
            request_options=self._options(),
        )

    def download(self, url: str, *, max_bytes: int) -> bytes:
        """GET a download URL, refusing more than ``max_bytes`` (announced or read)."""
        import httpx

        chunks: list[bytes] = []
        received = 0
        with (
            httpx.Client(timeout=self._timeout, follow_redirects=True) as http,
            http.stream("GET", url) as response,
        ):
            response.raise_for_status()
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise DownloadTooLarge(
                    f"{declared} bytes announced, the limit is {max_bytes}"
                )
            for chunk in response.iter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise DownloadTooLarge(f"more than {max_bytes} bytes")
                chunks.append(chunk)
        return b"".join(chunks)


class Context:
    """Per-call view handed to a hook implementation."""

    def __init__(
        self,
        *,
        event: Event,
        plugin: str,
        config: Any,
        state: PluginState,
        api: AgentMailReader,
        data: Mapping[str, Any],
        dry_run: bool,
        attempt: int,
        logger: logging.Logger | None = None,
    ) -> None:
        self.event = event
        self.plugin = plugin
        self.config = config
        self.state = state
        self.api = api
        self.dry_run = dry_run
        self.attempt = attempt
        self._earlier = dict(data)
        self._own: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        base = logger or logging.getLogger(f"agentmail_runner.plugins.{plugin}")
        self.log = logging.LoggerAdapter(
            base, {"event_id": event.event_id or event.delivery_id, "plugin": plugin}
        )

    @property
    def data(self) -> Mapping[str, Any]:
        """What earlier calls for this event put on the context, and this call's own."""
        with self._lock:
            return MappingProxyType({**self._earlier, **self._own})

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        """Share a JSON-ready value with later stages; it is kept with the event."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this call has ended; its context is closed")
            self._own[key] = value

    def contributions(self) -> dict[str, Any]:
        """Close the context and return what this call put on it."""
        with self._lock:
            self._closed = True
            return dict(self._own)


@dataclass(frozen=True)
class SendProposal:
    """An email about to leave, as the send guard and ``veto_send`` hooks see it."""

    action: Action
    plugin: str
    event: Event
    inbox_id: str
    recipients: tuple[str, ...]
