"""A loopback stand-in for the AgentMail HTTP API, for tests that use the real SDK.

The runner talks to AgentMail only through the official ``agentmail`` SDK. Mocking the
SDK would hide the parts most likely to go wrong: the paths it builds, how it escapes
ids, its automatic retries, and how it turns status codes into exceptions. This
module instead serves a small in-memory imitation of the API on 127.0.0.1, so a test
hands the code under test ``double.client()`` (a genuine ``agentmail.AgentMail``) and
then looks at what arrived.

What it offers:

* the endpoints the runner uses: send, reply, reply-all and forward; get and relabel a
  message; attachment metadata with a download URL served by the double itself; get a
  thread; create, list, get, update and delete webhooks;
* ``Idempotency-Key`` handling on the four sending endpoints, as AgentMail documents
  it: a replay returns the first answer and sends nothing, a reused key with another
  request is a 409;
* failure injection (status codes, ``Retry-After``, delays that outlast a client's
  timeout) through :meth:`AgentMailDouble.fail`;
* thread-safe records of every request, every email actually sent and every label
  change.

Ids in paths are routed on the raw request path, split on literal ``/`` and then
percent-decoded, because the SDK does not escape ``/``, ``?`` or ``#`` in message ids
and callers therefore quote them themselves.

Example::

    with AgentMailDouble() as double:
        double.add_message("inbox@example.com", {"message_id": "<m1@x>", ...})
        client = double.client()
        client.inboxes.messages.reply(
            "inbox@example.com", quote("<m1@x>", safe=""), text="hi",
            idempotency_key="k1",
        )
        assert double.sent[0].source_message_id == "<m1@x>"
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

import httpx
from agentmail import AgentMail, AgentMailEnvironment
from werkzeug.wrappers import Request, Response

from runner.testing.agentmail_records import (
    _IDEMPOTENCY_KEY_RE,
    FailureRule,
    LabelUpdate,
    RecordedRequest,
    SendKind,
    SentEmail,
    _Answer,
    _as_address_list,
    _as_label_list,
    _Attachment,
    _error,
    _iso,
    _now,
    _split_raw_path,
    _StoredAnswer,
)
from runner.testing.loopback import LoopbackServer, StopRequested

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "AgentMailDouble",
    "FailureRule",
    "LabelUpdate",
    "RecordedRequest",
    "SendKind",
    "SentEmail",
]

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class AgentMailDouble(LoopbackServer):
    """An in-memory AgentMail API served on 127.0.0.1 on an OS-chosen port.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. All public
    methods are safe to call from any thread while the server runs.
    """

    name = "agentmail-double"

    def __init__(self, api_key: str = "test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self._http_clients: list[httpx.Client] = []

        self._requests: list[RecordedRequest] = []
        self._sent: list[SentEmail] = []
        self._label_updates: list[LabelUpdate] = []
        self._failures: list[FailureRule] = []
        self._idempotency: dict[str, _StoredAnswer] = {}
        # Insertion order doubles as the order of a thread's messages.
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._threads: dict[tuple[str, str], dict[str, Any]] = {}
        self._attachments: dict[tuple[str, str, str], _Attachment] = {}
        self._downloads: dict[str, _Attachment] = {}
        self._webhooks: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------- lifecycle

    def _after_stop(self) -> None:
        with self._lock:
            clients, self._http_clients = self._http_clients, []
        for client in clients:
            client.close()

    @property
    def environment(self) -> AgentMailEnvironment:
        return AgentMailEnvironment(
            http=self.url, websockets=f"ws://127.0.0.1:{self.port}"
        )

    def client(self, **kwargs: Any) -> AgentMail:
        """A real ``agentmail.AgentMail`` aimed at the double.

        Keyword arguments go to ``AgentMail``. Unless ``httpx_client`` is given, the
        double creates the HTTP client itself and closes it in :meth:`stop`, because
        ``AgentMail`` has no ``close()`` and a leaked pool trips ResourceWarning.
        """
        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("environment", self.environment)
        if kwargs.get("httpx_client") is None:
            timeout = kwargs.get("timeout")
            follow_redirects = kwargs.pop("follow_redirects", True)
            http_client = httpx.Client(
                timeout=60.0 if timeout is None else timeout,
                follow_redirects=bool(follow_redirects),
            )
            with self._lock:
                self._http_clients.append(http_client)
            kwargs["httpx_client"] = http_client
        return AgentMail(**kwargs)

    # ------------------------------------------------------------------- seeding

    def add_message(self, inbox_id: str, message: dict[str, Any]) -> dict[str, Any]:
        """Store a message; missing fields the SDK's ``Message`` requires get defaults.

        ``message`` must hold ``message_id`` and ``thread_id``. Returns the stored copy.
        """
        if "message_id" not in message or "thread_id" not in message:
            raise ValueError("a seeded message needs message_id and thread_id")
        stored = self._complete_message(inbox_id, copy.deepcopy(message))
        with self._changed:
            self._messages[(inbox_id, stored["message_id"])] = stored
            return copy.deepcopy(stored)

    def add_thread(self, inbox_id: str, thread: dict[str, Any]) -> None:
        """Store a thread; messages listed in it are stored as messages too.

        Fields missing from the seed are derived from the thread's messages, and a
        thread's ``messages`` are always the stored messages carrying its thread_id.
        """
        if "thread_id" not in thread:
            raise ValueError("a seeded thread needs thread_id")
        seed = copy.deepcopy(thread)
        messages = seed.pop("messages", None) or []
        for message in messages:
            message.setdefault("thread_id", seed["thread_id"])
            self.add_message(inbox_id, message)
        with self._changed:
            self._threads[(inbox_id, seed["thread_id"])] = seed

    def add_attachment(
        self,
        inbox_id: str,
        message_id: str,
        attachment_id: str,
        content: bytes,
        filename: str = "file.pdf",
        content_type: str = "application/pdf",
    ) -> None:
        """Store an attachment's bytes, and list it on the message if that is stored."""
        attachment = _Attachment(bytes(content), filename, content_type)
        with self._changed:
            self._attachments[(inbox_id, message_id, attachment_id)] = attachment
            message = self._messages.get((inbox_id, message_id))
            if message is not None:
                listed = message.setdefault("attachments", [])
                listed[:] = [
                    a for a in listed if a.get("attachment_id") != attachment_id
                ]
                listed.append(self._attachment_metadata(attachment_id, attachment))

    def message(self, inbox_id: str, message_id: str) -> dict[str, Any]:
        """A copy of a stored message (seeded or sent), e.g. to check its labels."""
        with self._lock:
            try:
                return copy.deepcopy(self._messages[(inbox_id, message_id)])
            except KeyError:
                raise KeyError((inbox_id, message_id)) from None

    @property
    def webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._webhooks.values()))

    # ------------------------------------------------------------------- records

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def sent(self) -> list[SentEmail]:
        """Every email actually sent, in order (a snapshot)."""
        with self._lock:
            return list(self._sent)

    @property
    def label_updates(self) -> list[LabelUpdate]:
        with self._lock:
            return list(self._label_updates)

    def reset(self, *, state: bool = False) -> None:
        """Forget the records and any pending injected failures.

        Seeded data, webhooks and remembered idempotency keys stay, since AgentMail
        keeps keys for 24 hours; pass ``state=True`` to drop those as well.
        """
        with self._changed:
            self._requests.clear()
            self._sent.clear()
            self._label_updates.clear()
            self._failures.clear()
            if state:
                self._idempotency.clear()
                self._messages.clear()
                self._threads.clear()
                self._attachments.clear()
                self._downloads.clear()
                self._webhooks.clear()

    # --------------------------------------------------------- failure injection

    def fail(
        self,
        method: str,
        path_pattern: str,
        status: int | None = 500,
        times: int = 1,
        delay: float = 0.0,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> FailureRule:
        """Make the next ``times`` matching requests fail.

        A request matches when its method equals ``method`` (case-insensitive, "*" for
        any) and ``re.search(path_pattern, decoded_path)`` finds something. It then
        waits ``delay`` seconds (longer than a client's timeout simulates a hang) and
        answers ``status`` with ``body`` or an AgentMail-style error. With ``status``
        None it only waits, then is handled normally. The failure happens before the
        double processes anything, so it neither sends nor remembers an idempotency
        key. ``retry_after`` becomes a ``Retry-After`` header in whole seconds,
        rounded up, since the SDK only honours integer delta-seconds.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        rule = FailureRule(
            method=method.upper(),
            pattern=re.compile(path_pattern),
            status=status,
            remaining=times,
            delay=delay,
            retry_after=retry_after,
            body=copy.deepcopy(body),
        )
        with self._lock:
            self._failures.append(rule)
        return rule

    # --------------------------------------------------------------- the server

    def _wsgi_app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        request = Request(environ)
        try:
            record = self._record(request)
        except Exception:
            _logger.exception("agentmail double could not record a request")
            return self._respond(_error(500, "the double failed"))(
                environ, start_response
            )
        try:
            answer = self._handle(request, record)
        except StopRequested:
            answer = _error(503, "the double is shutting down")
        except Exception:
            # A bug in the double must show up as a failed test, not a hung client.
            _logger.exception(
                "agentmail double failed on %s %s", record.method, record.path
            )
            answer = _error(500, "the double failed")
        with self._changed:
            record.status = answer.status
            self._changed.notify_all()
        return self._respond(answer)(environ, start_response)

    @staticmethod
    def _respond(answer: _Answer) -> Response:
        if answer.raw is not None:
            data = answer.raw
        elif answer.body is None:
            data = b""
        else:
            data = json.dumps(answer.body).encode()
        response = Response(
            data, status=answer.status, content_type=answer.content_type
        )
        for name, value in answer.headers.items():
            response.headers[name] = value
        return response

    def _record(self, request: Request) -> RecordedRequest:
        environ = request.environ
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw_uri:
            # werkzeug hands over the request line as latin-1-decoded UTF-8.
            raw_uri = raw_uri.encode("latin-1").decode("utf-8", "replace")
            raw_path, raw_query, segments = _split_raw_path(raw_uri)
        else:
            # Another WSGI server: the best left is the already-decoded PATH_INFO.
            raw_path = request.path
            raw_query = environ.get("QUERY_STRING", "")
            segments = tuple(raw_path.split("/")[1:])
        body = request.get_data(cache=True)
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        record = RecordedRequest(
            method=request.method.upper(),
            path="/" + "/".join(segments),
            segments=segments,
            raw_path=raw_path,
            query=parse_qs(raw_query, keep_blank_values=True),
            headers={name.lower(): value for name, value in request.headers.items()},
            body=body,
            json=parsed,
            idempotency_key=request.headers.get("Idempotency-Key"),
            received_at=time.time(),
        )
        with self._changed:
            self._requests.append(record)
            self._changed.notify_all()
        return record

    def _take_failure(self, record: RecordedRequest) -> FailureRule | None:
        with self._lock:
            for rule in self._failures:
                if rule.method not in ("*", record.method):
                    continue
                if not rule.pattern.search(record.path):
                    continue
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._failures.remove(rule)
                return rule
        return None

    def _handle(self, request: Request, record: RecordedRequest) -> _Answer:
        rule = self._take_failure(record)
        if rule is not None:
            self._pause(rule.delay)
            if rule.status is not None:
                return self._injected(rule)

        segments = record.segments
        if segments[:1] == ("_downloads",) and len(segments) == 2:
            # Like AgentMail's presigned URLs, downloads need no API key.
            return self._download(segments[1])

        expected = f"Bearer {self.api_key}"
        if request.headers.get("Authorization") != expected:
            return _error(401, "Missing or invalid API key", name="UnauthorizedError")

        if record.body and record.json is None:
            return _error(400, "The request body is not valid JSON")
        if record.json is not None and not isinstance(record.json, dict):
            return _error(400, "The request body must be a JSON object")
        payload: dict[str, Any] = record.json or {}

        return self._route(record, payload)

    def _injected(self, rule: FailureRule) -> _Answer:
        assert rule.status is not None
        if rule.body is not None:
            answer = _Answer(rule.status, copy.deepcopy(rule.body))
        else:
            answer = _error(rule.status, "Injected failure")
        if rule.retry_after is not None:
            answer.headers["Retry-After"] = str(max(0, math.ceil(rule.retry_after)))
        return answer

    def _route(self, record: RecordedRequest, payload: dict[str, Any]) -> _Answer:
        method = record.method
        match record.segments:
            case ("v0", "inboxes", inbox, "messages", "send") if method == "POST":
                return self._send(record, payload, "send", inbox, None)
            case ("v0", "inboxes", inbox, "messages", mid, "reply") if method == "POST":
                return self._send(record, payload, "reply", inbox, mid)
            case ("v0", "inboxes", inbox, "messages", mid, "reply-all") if (
                method == "POST"
            ):
                return self._send(record, payload, "reply_all", inbox, mid)
            case ("v0", "inboxes", inbox, "messages", mid, "forward") if (
                method == "POST"
            ):
                return self._send(record, payload, "forward", inbox, mid)
            case ("v0", "inboxes", inbox, "messages", mid) if method == "GET":
                return self._get_message(inbox, mid)
            case ("v0", "inboxes", inbox, "messages", mid) if method == "PATCH":
                return self._update_message(inbox, mid, payload)
            case ("v0", "inboxes", inbox, "messages", mid, "attachments", aid) if (
                method == "GET"
            ):
                return self._get_attachment(inbox, mid, aid)
            case ("v0", "inboxes", inbox, "threads", tid) if method == "GET":
                return self._get_thread(inbox, tid)
            case ("v0", "webhooks") if method == "POST":
                return self._create_webhook(payload)
            case ("v0", "webhooks") if method == "GET":
                return self._list_webhooks(record)
            case ("v0", "webhooks", wid) if method == "GET":
                return self._get_webhook(wid)
            case ("v0", "webhooks", wid) if method == "PATCH":
                return self._update_webhook(wid, payload)
            case ("v0", "webhooks", wid) if method == "DELETE":
                return self._delete_webhook(wid)
        return _error(404, f"No route for {method} {record.path}")

    # ---------------------------------------------------------------- messages

    def _complete_message(
        self, inbox_id: str, message: dict[str, Any]
    ) -> dict[str, Any]:
        """Fill in every field ``agentmail.Message`` requires."""
        if "from" not in message and "from_" in message:
            message["from"] = message.pop("from_")
        stamp = _iso(_now())
        message.setdefault("inbox_id", inbox_id)
        message.setdefault("labels", [])
        message.setdefault("timestamp", stamp)
        message.setdefault("from", "sender@example.com")
        message.setdefault("to", [inbox_id])
        text = message.get("text") or message.get("html") or ""
        message.setdefault("size", len(str(text).encode()))
        message.setdefault("created_at", message["timestamp"])
        message.setdefault("updated_at", message["timestamp"])
        return message

    def _get_message(self, inbox_id: str, message_id: str) -> _Answer:
        with self._lock:
            message = self._messages.get((inbox_id, message_id))
            if message is None:
                return _error(404, f"Message {message_id} not found")
            return _Answer(200, copy.deepcopy(message))

    def _update_message(
        self, inbox_id: str, message_id: str, payload: dict[str, Any]
    ) -> _Answer:
        try:
            add = _as_label_list(payload.get("add_labels"))
            remove = _as_label_list(payload.get("remove_labels"))
        except ValueError as exc:
            return _error(400, str(exc))
        with self._changed:
            message = self._messages.get((inbox_id, message_id))
            if message is None:
                return _error(404, f"Message {message_id} not found")
            labels = [
                label for label in message.get("labels", []) if label not in remove
            ]
            labels.extend(label for label in add if label not in labels)
            message["labels"] = labels
            message["updated_at"] = _iso(_now())
            self._label_updates.append(
                LabelUpdate(
                    inbox_id, message_id, tuple(add), tuple(remove), tuple(labels)
                )
            )
            self._changed.notify_all()
            return _Answer(200, {"message_id": message_id, "labels": list(labels)})

    def _send(
        self,
        record: RecordedRequest,
        payload: dict[str, Any],
        kind: SendKind,
        inbox_id: str,
        source_id: str | None,
    ) -> _Answer:
        key = record.idempotency_key
        if key is not None and not _IDEMPOTENCY_KEY_RE.fullmatch(key):
            return _error(
                400, "Idempotency-Key must be 1-256 characters of A-Za-z0-9-._~"
            )
        fingerprint = json.dumps(
            [record.method, list(record.segments), payload], sort_keys=True
        )
        # One lock from key check to storing the answer, so concurrent retries with
        # one key cannot both send.
        with self._changed:
            if key is not None:
                previous = self._idempotency.get(key)
                if previous is not None:
                    if previous.fingerprint != fingerprint:
                        return _error(
                            409,
                            "Idempotency-Key was already used for a different request",
                            name="IdempotencyConflictError",
                        )
                    replay = _Answer(previous.status, copy.deepcopy(previous.body))
                    replay.headers["Idempotent-Replayed"] = "true"
                    return replay

            source = self._messages.get((inbox_id, source_id)) if source_id else None
            new_id = f"<{uuid.uuid4().hex}@agentmail-double.invalid>"
            if kind in ("reply", "reply_all") and source is not None:
                thread_id = str(source["thread_id"])
            else:
                thread_id = str(uuid.uuid4())
            self._store_sent_message(inbox_id, new_id, thread_id, kind, payload, source)
            body = {"message_id": new_id, "thread_id": thread_id}
            if key is not None:
                self._idempotency[key] = _StoredAnswer(fingerprint, 200, body)
            self._sent.append(
                SentEmail(
                    kind=kind,
                    inbox_id=inbox_id,
                    source_message_id=source_id,
                    json=copy.deepcopy(payload),
                    idempotency_key=key,
                    message_id=new_id,
                    thread_id=thread_id,
                )
            )
            self._changed.notify_all()
            return _Answer(200, dict(body))

    def _store_sent_message(
        self,
        inbox_id: str,
        message_id: str,
        thread_id: str,
        kind: SendKind,
        payload: dict[str, Any],
        source: dict[str, Any] | None,
    ) -> None:
        """Keep what was sent as a message, so tests can fetch it like AgentMail's."""
        to = _as_address_list(payload.get("to"))
        subject = payload.get("subject")
        if source is not None:
            original_subject = str(source.get("subject") or "")
            if kind in ("reply", "reply_all"):
                to = to or [str(source.get("from", ""))]
                subject = subject or f"Re: {original_subject}"
            elif kind == "forward":
                subject = subject or f"Fwd: {original_subject}"
        message: dict[str, Any] = {
            "message_id": message_id,
            "thread_id": thread_id,
            "labels": ["sent", *_as_label_list(payload.get("labels"))],
            "from": inbox_id,
            "to": to,
        }
        for name in ("cc", "bcc"):
            if payload.get(name):
                message[name] = _as_address_list(payload[name])
        if subject:
            message["subject"] = subject
        for name in ("text", "html", "headers"):
            if payload.get(name) is not None:
                message[name] = payload[name]
        if source is not None and kind != "forward":
            message["in_reply_to"] = source["message_id"]
        self._messages[(inbox_id, message_id)] = self._complete_message(
            inbox_id, message
        )

    # ------------------------------------------------------------- attachments

    @staticmethod
    def _attachment_metadata(
        attachment_id: str, attachment: _Attachment
    ) -> dict[str, Any]:
        return {
            "attachment_id": attachment_id,
            "filename": attachment.filename,
            "content_type": attachment.content_type,
            "size": len(attachment.content),
            "content_disposition": "attachment",
        }

    def _get_attachment(
        self, inbox_id: str, message_id: str, attachment_id: str
    ) -> _Answer:
        with self._lock:
            attachment = self._attachments.get((inbox_id, message_id, attachment_id))
            if attachment is None:
                return _error(404, f"Attachment {attachment_id} not found")
            token = secrets.token_urlsafe(16)
            self._downloads[token] = attachment
        body = self._attachment_metadata(attachment_id, attachment)
        body["download_url"] = f"{self.url}/_downloads/{token}"
        body["expires_at"] = _iso(_now() + timedelta(hours=1))
        return _Answer(200, body)

    def _download(self, token: str) -> _Answer:
        with self._lock:
            attachment = self._downloads.get(token)
        if attachment is None:
            return _error(404, "Download not found or expired")
        return _Answer(
            200,
            raw=attachment.content,
            content_type=attachment.content_type,
            headers={
                "Content-Disposition": f'attachment; filename="{attachment.filename}"'
            },
        )

    # ------------------------------------------------------------------ threads

    def _get_thread(self, inbox_id: str, thread_id: str) -> _Answer:
        with self._lock:
            seed = self._threads.get((inbox_id, thread_id))
            messages = [
                copy.deepcopy(message)
                for (inbox, _), message in self._messages.items()
                if inbox == inbox_id and message.get("thread_id") == thread_id
            ]
            if seed is None and not messages:
                return _error(404, f"Thread {thread_id} not found")
            seed = copy.deepcopy(seed or {})
        stamp = _iso(_now())
        last = messages[-1] if messages else {}
        senders: list[str] = []
        recipients: list[str] = []
        labels: list[str] = []
        for message in messages:
            for sender in _as_address_list(message.get("from")):
                if sender not in senders:
                    senders.append(sender)
            for name in ("to", "cc"):
                for address in _as_address_list(message.get(name)):
                    if address not in recipients:
                        recipients.append(address)
            for label in message.get("labels", []):
                if label not in labels:
                    labels.append(label)
        thread: dict[str, Any] = {
            "inbox_id": inbox_id,
            "thread_id": thread_id,
            "labels": labels,
            "timestamp": last.get("timestamp", stamp),
            "senders": senders,
            "recipients": recipients,
            "last_message_id": last.get("message_id", ""),
            "message_count": len(messages),
            "size": sum(int(message.get("size", 0)) for message in messages),
            "created_at": messages[0].get("created_at", stamp) if messages else stamp,
            "updated_at": last.get("updated_at", stamp),
        }
        if messages and messages[0].get("subject"):
            thread["subject"] = messages[0]["subject"]
        thread.update(seed)
        thread["messages"] = messages
        thread["count"] = len(messages)
        return _Answer(200, thread)

    # ----------------------------------------------------------------- webhooks

    def _create_webhook(self, payload: dict[str, Any]) -> _Answer:
        url = payload.get("url")
        event_types = payload.get("event_types")
        if not isinstance(url, str) or not url:
            return _error(400, "url is required")
        if not isinstance(event_types, list):
            return _error(400, "event_types is required")
        client_id = payload.get("client_id")
        with self._lock:
            if client_id is not None:
                for existing in self._webhooks.values():
                    if existing.get("client_id") == client_id:
                        return _Answer(200, copy.deepcopy(existing))
            stamp = _iso(_now())
            webhook: dict[str, Any] = {
                "webhook_id": f"wh_{uuid.uuid4().hex}",
                "url": url,
                "event_types": list(event_types),
                "inbox_ids": payload.get("inbox_ids"),
                "pod_ids": payload.get("pod_ids"),
                "secret": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
                "enabled": True,
                "created_at": stamp,
                "updated_at": stamp,
                "client_id": client_id,
            }
            self._webhooks[webhook["webhook_id"]] = webhook
            return _Answer(200, copy.deepcopy(webhook))

    def _list_webhooks(self, record: RecordedRequest) -> _Answer:
        with self._lock:
            webhooks = copy.deepcopy(list(self._webhooks.values()))
        if record.query.get("ascending", ["true"])[-1].lower() == "false":
            webhooks.reverse()
        limit = record.query.get("limit")
        if limit and limit[-1].isdigit():
            webhooks = webhooks[: int(limit[-1])]
        return _Answer(200, {"count": len(webhooks), "webhooks": webhooks})

    def _get_webhook(self, webhook_id: str) -> _Answer:
        with self._lock:
            webhook = self._webhooks.get(webhook_id)
            if webhook is None:
                return _error(404, f"Webhook {webhook_id} not found")
            return _Answer(200, copy.deepcopy(webhook))

    def _update_webhook(self, webhook_id: str, payload: dict[str, Any]) -> _Answer:
        with self._lock:
            webhook = self._webhooks.get(webhook_id)
            if webhook is None:
                return _error(404, f"Webhook {webhook_id} not found")
            for kind in ("inbox_ids", "pod_ids"):
                current = list(webhook.get(kind) or [])
                for item in payload.get(f"add_{kind}") or []:
                    if item not in current:
                        current.append(item)
                removed = set(payload.get(f"remove_{kind}") or [])
                current = [item for item in current if item not in removed]
                if current or webhook.get(kind) is not None:
                    webhook[kind] = current
            # AgentMail replaces event_types only when the new list is non-empty.
            if payload.get("event_types"):
                webhook["event_types"] = list(payload["event_types"])
            if payload.get("enabled") is not None:
                webhook["enabled"] = bool(payload["enabled"])
            webhook["updated_at"] = _iso(_now())
            return _Answer(200, copy.deepcopy(webhook))

    def _delete_webhook(self, webhook_id: str) -> _Answer:
        with self._lock:
            if self._webhooks.pop(webhook_id, None) is None:
                return _error(404, f"Webhook {webhook_id} not found")
        return _Answer(204)
