"""A loopback stand-in for an OpenAI-compatible chat completions server.

Code that drafts text with a language model talks to it through the official
``openai`` SDK, which is also how it reaches Ollama, vLLM or llama.cpp. Tests aim that
same SDK at this double instead of mocking it, so the request the SDK builds, its
retries, its timeouts and the exceptions it raises for each status are all the real
ones.

What it offers:

* ``POST /v1/chat/completions`` answered in the wire format of the real API (``id``,
  ``object``, ``created``, ``model``, ``choices`` with ``message`` and
  ``finish_reason``, ``usage``), and ``GET /v1/models``;
* a script of the next answers, taken one per request in order: a completion
  (:meth:`OpenAIDouble.reply`: text, ``None`` content, a refusal, a ``finish_reason``
  of ``length`` or ``content_filter``) or a failure (:meth:`OpenAIDouble.fail`: a
  status with an OpenAI-style error body, ``Retry-After``); either may first wait, to
  outlast a client's timeout. With the script empty it answers ``default_content``;
* thread-safe records of every request (JSON body and headers).

Example::

    with OpenAIDouble() as double:
        double.fail(429, code="rate_limit_exceeded")
        double.reply("Thanks, we are on it.")
        with openai.OpenAI(
            base_url=double.url + "/v1", api_key="test", max_retries=1, timeout=5
        ) as client:
            completion = client.chat.completions.create(model="m", messages=[...])
        assert completion.choices[0].message.content == "Thanks, we are on it."
        assert len(double.completion_requests) == 2
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from werkzeug.wrappers import Request, Response

from runner.testing.loopback import LoopbackServer, StopRequested

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["OpenAIDouble", "RecordedRequest", "ScriptedAnswer", "error_body"]

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

COMPLETIONS_PATH = "/v1/chat/completions"

# What the real API puts in error.type, error.code and error.message for each status,
# so that a test naming only the status still gets a realistic body.
_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "The request is not valid."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: ("server_error", None, "The server had an error processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded."),
}

_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details."
)


@dataclass
class RecordedRequest:
    """One HTTP request as the double received it.

    ``status`` is filled in once the double has answered, so it stays None while a
    scripted delay is still running.
    """

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    json: Any
    """The parsed JSON body, or None when the body is empty or not JSON."""
    received_at: float
    status: int | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages of a completion request (empty for anything else)."""
        found = self.json.get("messages") if isinstance(self.json, dict) else None
        return [m for m in found if isinstance(m, dict)] if found else []

    def message_text(self, role: str) -> str:
        """The text of every message with ``role``, joined by blank lines."""
        return "\n\n".join(
            _content_text(m.get("content")) for m in self.messages if m["role"] == role
        )


@dataclass
class ScriptedAnswer:
    """One queued answer; see :meth:`OpenAIDouble.reply` and :meth:`OpenAIDouble.fail`.

    A completion when ``status`` is 200, else an error answer with ``error``.
    """

    status: int = 200
    content: str | None = None
    refusal: str | None = None
    finish_reason: str = "stop"
    model: str | None = None
    error: dict[str, Any] | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def _content_text(content: Any) -> str:
    # A message's content is a string or a list of typed parts.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        )
    return ""


def _token_count(text: str) -> int:
    # A rough figure is enough: tests only need usage to be present and plausible.
    return len(text.split())


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An error document as the OpenAI API writes it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class OpenAIDouble(LoopbackServer):
    """An OpenAI-compatible chat completions server on 127.0.0.1, OS-chosen port.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. All public
    methods are safe to call from any thread while the server runs. With ``api_key``
    set, requests must carry ``Authorization: Bearer <api_key>`` (else 401, as the
    real API answers); with None any key is accepted.
    """

    name = "openai-double"

    def __init__(
        self,
        api_key: str | None = "test",
        *,
        default_content: str = "Thank you for your message.",
        models: Iterable[str] = ("gpt-4o-mini",),
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.default_content = default_content
        self.models = tuple(models)
        self._requests: list[RecordedRequest] = []
        self._script: list[ScriptedAnswer] = []

    @property
    def base_url(self) -> str:
        """What to give the SDK as ``base_url``."""
        return f"{self.url}/v1"

    # ------------------------------------------------------------------ script

    def reply(
        self,
        content: str | None = "Thank you for your message.",
        *,
        refusal: str | None = None,
        finish_reason: str = "stop",
        model: str | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` completion requests with this completion.

        ``content`` None is the empty message a refusal or a filter leaves; ``model``
        overrides the echo of the requested model. ``delay`` seconds pass first.
        """
        self._queue(
            ScriptedAnswer(
                content=content,
                refusal=refusal,
                finish_reason=finish_reason,
                model=model,
                delay=delay,
            ),
            times,
        )

    def fail(
        self,
        status: int = 500,
        *,
        code: str | None = None,
        type: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` completion requests with an error.

        The body is ``{"error": {"message", "type", "param", "code"}}``; whatever is
        not given takes the real API's usual value for ``status``. ``code``
        ``"insufficient_quota"`` on a 429 gets the quota error's type and message.
        ``retry_after`` becomes a ``Retry-After`` header in seconds.
        """
        default_type, default_code, default_message = _ERROR_DEFAULTS.get(
            status, ("api_error", None, f"Error {status}.")
        )
        if code == "insufficient_quota":
            default_type, default_message = "insufficient_quota", _QUOTA_MESSAGE
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = _seconds_header(retry_after)
        self._queue(
            ScriptedAnswer(
                status=status,
                error=error_body(
                    message or default_message,
                    type=type or default_type,
                    code=code if code is not None else default_code,
                ),
                delay=delay,
                headers=extra,
            ),
            times,
        )

    def _queue(self, answer: ScriptedAnswer, times: int) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._script.extend(copy.deepcopy(answer) for _ in range(times))

    @property
    def pending(self) -> int:
        """How many scripted answers have not been taken yet."""
        with self._lock:
            return len(self._script)

    # ------------------------------------------------------------------ records

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def completion_requests(self) -> list[RecordedRequest]:
        """Every ``POST /v1/chat/completions`` received, retries included."""
        return [
            r
            for r in self.requests
            if r.method == "POST" and r.path.rstrip("/") == COMPLETIONS_PATH
        ]

    def reset(self) -> None:
        """Forget the records and whatever is left of the script."""
        with self._changed:
            self._requests.clear()
            self._script.clear()

    # --------------------------------------------------------------- the server

    def _wsgi_app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        request = Request(environ)
        record = self._record(request)
        try:
            answer = self._handle(request, record)
        except StopRequested:
            answer = _error(503, "The server is shutting down.", "server_error")
        except Exception:
            # A bug in the double must show up as a failed test, not a hung client.
            _logger.exception(
                "openai double failed on %s %s", record.method, record.path
            )
            answer = _error(500, "The double failed.", "server_error")
        with self._changed:
            record.status = answer.status
            self._changed.notify_all()
        response = Response(
            json.dumps(answer.body), status=answer.status, mimetype="application/json"
        )
        for name, value in answer.headers.items():
            response.headers[name] = value
        return response(environ, start_response)

    def _record(self, request: Request) -> RecordedRequest:
        body = request.get_data(cache=True)
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        record = RecordedRequest(
            method=request.method.upper(),
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=body,
            json=parsed,
            received_at=time.time(),
        )
        with self._changed:
            self._requests.append(record)
            self._changed.notify_all()
        return record

    def _handle(self, request: Request, record: RecordedRequest) -> _Answer:
        if self.api_key is not None and (
            request.headers.get("Authorization") != f"Bearer {self.api_key}"
        ):
            return _error(
                401,
                _ERROR_DEFAULTS[401][2],
                "invalid_request_error",
                code="invalid_api_key",
            )
        path = record.path.rstrip("/")
        if path == COMPLETIONS_PATH and record.method == "POST":
            return self._complete(record)
        if path == "/v1/models" and record.method == "GET":
            return _Answer(200, self._model_list())
        return _error(
            404,
            f"Unknown request URL: {record.method} {record.path}.",
            "invalid_request_error",
            code="unknown_url",
        )

    def _complete(self, record: RecordedRequest) -> _Answer:
        problem = _request_problem(record.json)
        if problem is not None:
            return _error(400, problem, "invalid_request_error")
        with self._lock:
            scripted = self._script.pop(0) if self._script else None
        if scripted is None:
            scripted = ScriptedAnswer(content=self.default_content)
        self._pause(scripted.delay)
        if scripted.status != 200:
            return _Answer(
                scripted.status, copy.deepcopy(scripted.error), dict(scripted.headers)
            )
        return _Answer(200, _completion(record.json, scripted), dict(scripted.headers))

    def _model_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "double"}
                for m in self.models
            ],
        }


def _request_problem(payload: Any) -> str | None:
    """Why a chat completions request is invalid, as the API would say, or None."""
    if not isinstance(payload, dict):
        return "The request body must be a JSON object."
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return "you must provide a model parameter"
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            return f"Missing required parameter: 'messages[{index}].role'."
    if payload.get("stream"):
        return "this test double does not stream; call without stream=True"
    return None


def _completion(request: dict[str, Any], scripted: ScriptedAnswer) -> dict[str, Any]:
    prompt = "\n".join(_content_text(m.get("content")) for m in request["messages"])
    answer = scripted.content or ""
    prompt_tokens, completion_tokens = _token_count(prompt), _token_count(answer)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": scripted.model or request["model"],
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": scripted.content,
                    "refusal": scripted.refusal,
                },
                "logprobs": None,
                "finish_reason": scripted.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
    }


def _error(status: int, message: str, type: str, *, code: str | None = None) -> _Answer:
    return _Answer(status, error_body(message, type=type, code=code))


def _seconds_header(seconds: float) -> str:
    # Whole seconds, rounded up, are what every client understands.
    return str(max(0, math.ceil(seconds)))
