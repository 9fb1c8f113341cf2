"""The OpenAI double, driven through the real ``openai`` SDK over loopback.

Nothing is mocked: each call goes through the SDK's HTTP client to the double, so these
tests also pin down what the SDK version the plugins depend on sends, how it retries,
and which exception it raises for each answer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from runner.testing.openai_double import OpenAIDouble

MESSAGES = [
    {"role": "system", "content": "You answer email."},
    {"role": "user", "content": "Where is my parcel?"},
]


@pytest.fixture
def double() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as running:
        yield running


def client_for(
    double: OpenAIDouble, *, max_retries: int = 0, timeout: float = 5.0, **kw: object
) -> openai.OpenAI:
    options: dict[str, object] = {"api_key": "test", **kw}
    return openai.OpenAI(
        base_url=double.url + "/v1",
        max_retries=max_retries,
        timeout=timeout,
        **options,  # type: ignore[arg-type]
    )


def complete(client: openai.OpenAI) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]


def test_serves_on_loopback(double: OpenAIDouble) -> None:
    assert double.url == f"http://127.0.0.1:{double.port}"
    assert double.base_url == double.url + "/v1"


def test_a_scripted_completion_arrives_in_the_wire_format(
    double: OpenAIDouble,
) -> None:
    double.reply("Your parcel left the depot.")

    with client_for(double) as client:
        completion = complete(client)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert completion.created > 0
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Your parcel left the depot."
    assert choice.message.refusal is None
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_requests_are_recorded_with_body_and_headers(double: OpenAIDouble) -> None:
    with client_for(double) as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            temperature=0.2,
            max_tokens=300,
        )

    [request] = double.completion_requests
    assert request.json["model"] == "gpt-4o-mini"
    assert request.json["temperature"] == 0.2
    assert request.json["max_tokens"] == 300
    assert request.messages == MESSAGES
    assert request.message_text("system") == "You answer email."
    assert request.message_text("user") == "Where is my parcel?"
    assert request.headers["authorization"] == "Bearer test"
    assert request.headers["content-type"] == "application/json"
    assert request.status == 200


def test_with_an_empty_script_the_default_content_answers(
    double: OpenAIDouble,
) -> None:
    with client_for(double) as client:
        first = complete(client)
        second = complete(client)

    assert first.choices[0].message.content == double.default_content
    assert second.choices[0].message.content == double.default_content


def test_scripted_answers_are_taken_in_order(double: OpenAIDouble) -> None:
    double.reply("one")
    double.reply("two", times=2)

    with client_for(double) as client:
        texts = [complete(client).choices[0].message.content for _ in range(4)]

    assert texts == ["one", "two", "two", double.default_content]
    assert double.pending == 0


@pytest.mark.parametrize(
    ("content", "refusal", "finish_reason"),
    [
        (None, None, "stop"),
        ("", None, "stop"),
        (None, "I can't help with that.", "stop"),
        ("Dear customer, your par", None, "length"),
        (None, None, "content_filter"),
    ],
)
def test_empty_refused_and_cut_off_completions_reach_the_client_as_scripted(
    double: OpenAIDouble, content: str | None, refusal: str | None, finish_reason: str
) -> None:
    double.reply(content, refusal=refusal, finish_reason=finish_reason)

    with client_for(double) as client:
        choice = complete(client).choices[0]

    assert choice.message.content == content
    assert choice.message.refusal == refusal
    assert choice.finish_reason == finish_reason


def test_a_rate_limit_is_retried_by_the_sdk_honouring_retry_after(
    double: OpenAIDouble,
) -> None:
    double.fail(429, headers={"retry-after-ms": "50"})
    double.reply("after the wait")

    with client_for(double, max_retries=2) as client:
        completion = complete(client)

    assert completion.choices[0].message.content == "after the wait"
    first, second = double.completion_requests
    assert first.status == 429
    assert second.status == 200
    assert second.received_at - first.received_at >= 0.05


def test_retry_after_is_sent_in_whole_seconds(double: OpenAIDouble) -> None:
    double.fail(429, retry_after=0.2)

    with client_for(double) as client, pytest.raises(openai.RateLimitError) as caught:
        complete(client)

    assert caught.value.response.headers["retry-after"] == "1"


def test_a_rate_limit_error_carries_its_type_and_code(double: OpenAIDouble) -> None:
    double.fail(429)

    with client_for(double) as client, pytest.raises(openai.RateLimitError) as caught:
        complete(client)

    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert "Rate limit reached" in caught.value.message


def test_insufficient_quota_is_a_429_with_its_own_code(double: OpenAIDouble) -> None:
    double.fail(429, code="insufficient_quota")

    with client_for(double) as client, pytest.raises(openai.RateLimitError) as caught:
        complete(client)

    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"
    assert "exceeded your current quota" in caught.value.message
    assert len(double.completion_requests) == 1


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_each_status_surfaces_as_the_sdk_error_class(
    double: OpenAIDouble, status: int, error_class: type[openai.APIStatusError]
) -> None:
    double.fail(status)

    with client_for(double) as client, pytest.raises(error_class) as caught:
        complete(client)

    assert caught.value.status_code == status


def test_a_wrong_api_key_is_refused_with_invalid_api_key(
    double: OpenAIDouble,
) -> None:
    with (
        client_for(double, api_key="wrong") as client,  # type: ignore[arg-type]
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        complete(client)

    assert caught.value.code == "invalid_api_key"


def test_without_an_api_key_any_key_is_accepted() -> None:
    with OpenAIDouble(api_key=None) as double:
        with client_for(double, api_key="anything") as client:  # type: ignore[arg-type]
            complete(client)
        assert double.completion_requests[0].status == 200


def test_server_errors_are_retried_by_the_sdk(double: OpenAIDouble) -> None:
    double.fail(500, times=2, headers={"retry-after-ms": "10"})
    double.reply("third time")

    with client_for(double, max_retries=2) as client:
        completion = complete(client)

    assert completion.choices[0].message.content == "third time"
    assert [r.status for r in double.completion_requests] == [500, 500, 200]


def test_a_delay_longer_than_the_timeout_is_a_timeout(double: OpenAIDouble) -> None:
    double.reply("too late", delay=1.0)

    started = time.monotonic()
    with (
        client_for(double, timeout=0.2) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        complete(client)

    assert time.monotonic() - started < 1.0


def test_a_timed_out_request_is_retried_and_takes_the_next_answer(
    double: OpenAIDouble,
) -> None:
    double.reply("too late", delay=1.0)
    double.reply("in time")

    with client_for(double, timeout=0.3, max_retries=1) as client:
        completion = complete(client)

    assert completion.choices[0].message.content == "in time"
    assert len(double.completion_requests) == 2


def test_an_invalid_request_is_a_400(double: OpenAIDouble) -> None:
    with client_for(double) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])

    assert "non-empty" in caught.value.message


def test_streaming_is_refused_clearly(double: OpenAIDouble) -> None:
    with client_for(double) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )

    assert "does not stream" in caught.value.message


def test_models_are_listed(double: OpenAIDouble) -> None:
    with client_for(double) as client:
        models = [m.id for m in client.models.list()]

    assert models == ["gpt-4o-mini"]


def test_an_unknown_path_is_a_404(double: OpenAIDouble) -> None:
    with httpx.Client() as http:
        response = http.post(
            double.url + "/v1/embeddings",
            json={},
            headers={"Authorization": "Bearer test"},
        )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"


def test_reset_forgets_records_and_script(double: OpenAIDouble) -> None:
    double.fail(500)
    with client_for(double) as client, pytest.raises(openai.InternalServerError):
        complete(client)
    double.fail(500)

    double.reset()

    assert double.requests == []
    assert double.pending == 0


def test_wait_for_returns_once_a_request_arrives(double: OpenAIDouble) -> None:
    def call() -> None:
        with client_for(double) as client:
            complete(client)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        found = double.wait_for(lambda: double.completion_requests, timeout=5)
    finally:
        caller.join(5)

    assert len(found) == 1


def test_wait_for_times_out(double: OpenAIDouble) -> None:
    with pytest.raises(TimeoutError, match=r"not met within 0\.05 s"):
        double.wait_for(lambda: double.completion_requests, timeout=0.05)


def test_stop_cuts_a_pending_delay_short() -> None:
    double = OpenAIDouble().start()
    double.reply("never", delay=30)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with client_for(double, timeout=60) as client:
                complete(client)
        except openai.APIError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    double.wait_for(lambda: double.completion_requests)

    started = time.monotonic()
    double.stop()
    caller.join(5)

    assert time.monotonic() - started < 5
    assert isinstance(errors[0], openai.InternalServerError)
    assert errors[0].status_code == 503


def test_stop_is_clean_and_repeatable() -> None:
    double = OpenAIDouble().start()
    port = double.port
    double.stop()
    double.stop()

    assert not double.running
    with socket.socket() as probe:
        probe.settimeout(0.5)
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_starting_twice_is_refused(double: OpenAIDouble) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        double.start()


def test_times_below_one_is_refused(double: OpenAIDouble) -> None:
    with pytest.raises(ValueError, match="times must be at least 1"):
        double.reply("x", times=0)
