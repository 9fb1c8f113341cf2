"""One chat completion through the openai SDK, and what its answer is good for.

The SDK reaches OpenAI or any compatible server (Ollama, vLLM, llama.cpp). Failures are
sorted by what retrying can do: rate limits, server errors and timeouts are retried by
the SDK within a small budget and then left to the runner's own retry of the event;
an exhausted quota, a rejected key or a request the server cannot accept are
permanent. A completion that is empty, refused or cut off is no reply at all.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from runner import PermanentError

from .config import AutoResponderConfig, Drafting

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

__all__ = ["CompletionUnavailable", "Draft", "judge", "request_draft"]

# The longest the SDK may sleep between its own attempts: its backoff grows to 8 s,
# and a server asking for a longer wait is left to the runner's retry of the event.
LONGEST_RETRY_WAIT_SECONDS = 10.0


class CompletionUnavailable(Exception):
    """The model server did not answer usefully this time; a later attempt may."""


@dataclass(frozen=True)
class Draft:
    """A reply body, or the reason there is none and a person must answer."""

    text: str = ""
    problem: str | None = None


def _server(client: openai.OpenAI) -> str:
    """The server's address without any credentials written into it."""
    parts = urllib.parse.urlsplit(str(client.base_url))
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def _retry_wait(headers: Any) -> float:
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) / divisor
            except ValueError:
                return 0.0
    return 0.0


def _error_code(response: Any) -> str | None:
    try:
        response.read()
        error = response.json().get("error")
    except Exception:  # not JSON, or not an object: no code to read
        return None
    return str(error.get("code")) if isinstance(error, dict) else None


def _refuse_hopeless_retries(response: Any) -> None:
    """Tell the SDK not to retry what its own attempts cannot fix.

    An exhausted quota stays exhausted however often it is asked, and a server that
    asks for a long wait would have the SDK sleep while the event's lease runs out;
    the runner's retry of the event comes back later without holding the lease.
    """
    status = response.status_code
    if status != 429 and status < 500:
        return
    hopeless = _retry_wait(response.headers) > LONGEST_RETRY_WAIT_SECONDS or (
        status == 429 and _error_code(response) == "insufficient_quota"
    )
    if hopeless:
        response.headers["x-should-retry"] = "false"


def _client(config: AutoResponderConfig) -> openai.OpenAI:
    import openai

    # Explicit timeout and retries: the SDK's defaults would wait ten minutes.
    http = openai.DefaultHttpxClient(
        timeout=config.request_timeout_seconds,
        event_hooks={"response": [_refuse_hopeless_retries]},
    )
    try:
        # As for every setting the runner reads, the environment wins over the file.
        table_key = config.api_key.get_secret_value() if config.api_key else None
        return openai.OpenAI(
            api_key=os.environ.get("OPENAI_API_KEY") or table_key,
            base_url=os.environ.get("OPENAI_BASE_URL") or config.base_url,
            timeout=config.request_timeout_seconds,
            max_retries=config.max_retries,
            http_client=http,
        )
    except openai.OpenAIError as exc:
        http.close()
        raise PermanentError(
            f"cannot set up the model client: {exc} (set OPENAI_API_KEY, or api_key "
            "in [plugins.autoresponder])"
        ) from exc


def request_draft(
    config: AutoResponderConfig, drafting: Drafting, messages: list[dict[str, str]]
) -> Draft:
    """Ask the model for a reply body; raise when no answer came."""
    import openai

    options: dict[str, Any] = {config.max_tokens_parameter: drafting.max_tokens}
    if drafting.temperature is not None:
        options["temperature"] = drafting.temperature
    with _client(config) as client:
        server = _server(client)
        try:
            completion: ChatCompletion = client.chat.completions.create(
                model=drafting.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                **options,
            )
        except openai.APIError as exc:
            raise _explain(exc, server, drafting.model, config) from exc
    return judge(completion, drafting)


def _explain(
    exc: openai.APIError, server: str, model: str, config: AutoResponderConfig
) -> Exception:
    """The exception the runner should see: permanent, or worth a later attempt."""
    import openai

    attempts = config.max_retries + 1
    if isinstance(exc, openai.APITimeoutError):
        return CompletionUnavailable(
            f"{server} did not answer within {config.request_timeout_seconds:g} s "
            f"({attempts} attempt(s)); the event will be retried"
        )
    if isinstance(exc, openai.APIConnectionError):
        return CompletionUnavailable(
            f"cannot reach {server} ({attempts} attempt(s)); the event will be retried"
        )
    if not isinstance(exc, openai.APIStatusError):
        return CompletionUnavailable(f"{server} gave an unusable answer: {exc.message}")
    status, code = exc.status_code, exc.code or exc.type or "no code"
    if status == 429 and exc.code == "insufficient_quota":
        return PermanentError(
            f"{server} answered 429 insufficient_quota: the account's quota is "
            "exhausted; add credit or raise the limit, then requeue the event"
        )
    if status in (401, 403):
        return PermanentError(
            f"{server} refused the API key ({status} {code}): check OPENAI_API_KEY "
            "or api_key in [plugins.autoresponder]"
        )
    if status in (408, 409, 429) or status >= 500:
        return CompletionUnavailable(
            f"{server} answered {status} {code}; the event will be retried"
        )
    return PermanentError(
        f"{server} rejected the request for model {model!r} ({status} {code}: "
        f"{_said(exc)}); check model, max_tokens_parameter and temperature in "
        "[plugins.autoresponder]"
    )


def _said(exc: openai.APIStatusError) -> str:
    """The server's own error message, without the SDK's dump of the whole body."""
    body = exc.body
    said = body.get("message") if isinstance(body, dict) else None
    return str(said) if said else "no message"


def judge(completion: ChatCompletion, drafting: Drafting) -> Draft:
    """The reply body in a completion, or why a person has to answer instead."""
    if not completion.choices:
        return Draft(problem="the model returned no choices")
    choice = completion.choices[0]
    if choice.message.refusal:
        return Draft(problem="the model refused to draft a reply")
    if choice.finish_reason == "length":
        return Draft(
            problem=f"the draft was cut off at max_tokens ({drafting.max_tokens})"
        )
    if choice.finish_reason == "content_filter":
        return Draft(problem="the draft was stopped by the content filter")
    text = (choice.message.content or "").strip()
    if not text:
        return Draft(problem="the model returned an empty draft")
    return Draft(text=text)
