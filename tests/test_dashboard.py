"""The dashboard: off without an admin token, refused without it, escaped, and its
pages and actions (retry a dead letter, remove a suppression) driven through Flask."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from runner import Context, Event, PermanentError, SendProposal, hookimpl
from runner.config import ConfigError, load_config, redact
from runner.dashboard.auth import COOKIE_NAME
from runner.dashboard.chart import WINDOWS, build_chart
from runner.ingress import create_app
from runner.runtime import Runtime
from runner.store import DEAD, DONE
from tests.conftest import RuntimeFactory, deliver, load_payload, write_config

TOKEN = "dashboard-token-for-the-tests-0123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = "<script>alert('x')</script>"


def received(**message: Any) -> dict[str, Any]:
    """The corpus message.received event under a fresh event id."""
    payload = load_payload("message-received.json")
    payload["event_id"] = str(uuid.uuid4())
    payload["message"].update(message)
    return payload


class Flaky:
    """Fails every call while ``broken`` is set, for good when ``permanent``."""

    def __init__(self, *, permanent: bool = False) -> None:
        self.broken = True
        self.permanent = permanent
        self.calls = 0

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def route(self, event: Event, context: Context) -> None:
        self.calls += 1
        if self.broken and self.permanent:
            raise PermanentError("the mailbox is gone")
        if self.broken:
            raise RuntimeError("the classifier is down")


class Vetoer:
    """Stops every email to the corpus sender."""

    @hookimpl
    def veto_send(self, proposal: SendProposal, context: Context) -> str | None:
        if "pat@example.org" in proposal.recipients:
            return "pat asked not to be written to"
        return None


class SuppressionKeeper:
    """Keeps its suppression list the way the bounce tracker does: one state entry
    per address under ``suppressed:``."""

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.bounced"]

    @hookimpl
    def observe(self, event: Event, context: Context) -> None:
        for recipient in event.object.get("recipients", ()):
            context.state.set(
                f"suppressed:{recipient['address']}",
                {"reason": "bounced", "event": event.event_id},
            )


def dashboard_runtime(make_runtime: RuntimeFactory, **kwargs: Any) -> Runtime:
    kwargs.setdefault("admin_token", TOKEN)
    return make_runtime(**kwargs)


def client_for(rt: Runtime) -> FlaskClient:
    return create_app(rt).test_client()


def event_pk(rt: Runtime, event_id: str) -> int:
    row = rt.store.get_event(event_id)
    assert row is not None
    return row.pk


def status_of(rt: Runtime, pk: int) -> str:
    row = rt.store.get_event(pk)
    assert row is not None
    return row.status


def settle(rt: Runtime) -> None:
    """Let a worker take every attempt due now or after a (short test) back-off."""
    while (due := rt.store.next_due()) is not None:
        time.sleep(max(0.0, due - time.time()))
        rt.drain()


def dead_letter(rt: Runtime) -> int:
    """A dead letter from a ``Flaky`` plugin that is still broken."""
    payload = received()
    assert deliver(rt, payload).status_code == 200
    settle(rt)
    row = rt.store.get_event(payload["event_id"])
    assert row is not None and row.status == DEAD
    return row.pk


def log_in(client: FlaskClient) -> None:
    response = client.post("/dashboard/login", data={"token": TOKEN})
    assert response.status_code == 303


def form_fields(page: str, action: str) -> dict[str, str]:
    """The hidden fields of the page's form that posts to ``action``."""
    form = re.search(rf'<form[^>]*action="{re.escape(action)}".*?</form>', page, re.S)
    assert form is not None, action
    return dict(
        re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form[0])
    )


# -- switched on, locked ---------------------------------------------------------------


def test_the_dashboard_is_not_served_without_an_admin_token(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(make_runtime())

    assert client.get("/dashboard/", headers=BEARER).status_code == 404
    assert client.get("/dashboard/login").status_code == 404


def test_a_request_without_the_token_is_refused_with_the_login_form(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    for path in ("/dashboard/", "/dashboard/dead", "/dashboard/events/1"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="agentmail-runner"'
        assert 'name="token"' in response.get_data(as_text=True)


def test_a_wrong_bearer_token_is_refused(make_runtime: RuntimeFactory) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    response = client.get(
        "/dashboard/", headers={"Authorization": "Bearer not-the-token"}
    )

    assert response.status_code == 401
    assert "That is not the admin token." in response.get_data(as_text=True)


def test_the_bearer_token_opens_the_pages(make_runtime: RuntimeFactory) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    for path in ("/dashboard/", "/dashboard/dead", "/dashboard/plugins"):
        assert client.get(path, headers=BEARER).status_code == 200, path


def test_wrong_tokens_past_the_budget_are_answered_429(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    codes = [
        client.post("/dashboard/login", data={"token": "guess"}).status_code
        for _ in range(12)
    ]

    assert codes[:10] == [401] * 10
    assert codes[10:] == [429, 429]


def test_past_the_budget_the_right_token_is_refused_too(
    make_runtime: RuntimeFactory,
) -> None:
    # Otherwise a 429 would only tell a guesser "wrong", and the right guess would
    # still get in.
    client = client_for(dashboard_runtime(make_runtime))
    for _ in range(11):
        client.post("/dashboard/login", data={"token": "guess"})

    by_form = client.post("/dashboard/login", data={"token": TOKEN})
    by_header = client.get("/dashboard/", headers=BEARER)

    assert (by_form.status_code, by_header.status_code) == (429, 429)
    assert by_header.headers["Retry-After"] == "60"
    assert COOKIE_NAME not in by_form.headers.get("Set-Cookie", "")


def test_a_client_that_is_not_on_loopback_is_refused(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    response = client.get(
        "/dashboard/", headers=BEARER, environ_base={"REMOTE_ADDR": "192.0.2.7"}
    )

    assert response.status_code == 403
    assert "set [runner] dashboard_allow_remote = true" in response.get_data(
        as_text=True
    )


def test_dashboard_allow_remote_lets_other_clients_in_with_the_token(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime, dashboard_allow_remote=True))
    remote = {"REMOTE_ADDR": "192.0.2.7"}

    assert client.get("/dashboard/", environ_base=remote).status_code == 401
    response = client.get("/dashboard/", headers=BEARER, environ_base=remote)
    assert response.status_code == 200


def test_ipv6_and_mapped_loopback_clients_are_loopback(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    for address in ("::1", "::ffff:127.0.0.1", "127.0.0.9"):
        response = client.get(
            "/dashboard/", headers=BEARER, environ_base={"REMOTE_ADDR": address}
        )
        assert response.status_code == 200, address


def test_the_login_form_sets_a_signed_httponly_samesite_strict_cookie(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    response = client.post("/dashboard/login", data={"token": TOKEN})

    assert response.status_code == 303
    assert response.headers["Location"] == "/dashboard/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("agentmail_runner_dashboard=")
    assert TOKEN not in cookie
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/dashboard"):
        assert attribute in cookie
    assert client.get("/dashboard/").status_code == 200


def test_a_forged_session_cookie_is_refused(make_runtime: RuntimeFactory) -> None:
    rt = dashboard_runtime(make_runtime)
    client = client_for(rt)
    client.post("/dashboard/login", data={"token": TOKEN})
    real = client.get_cookie("agentmail_runner_dashboard", path="/dashboard")
    assert real is not None

    forged = client_for(rt)
    forged.set_cookie(
        "agentmail_runner_dashboard", real.value[:-2] + "xx", path="/dashboard"
    )

    assert forged.get("/dashboard/").status_code == 401


def test_a_new_admin_token_ends_the_old_sessions(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime))
    client.post("/dashboard/login", data={"token": TOKEN})
    cookie = client.get_cookie("agentmail_runner_dashboard", path="/dashboard")
    assert cookie is not None

    other = client_for(
        dashboard_runtime(make_runtime, admin_token="a-different-token-456789")
    )
    other.set_cookie("agentmail_runner_dashboard", cookie.value, path="/dashboard")

    assert other.get("/dashboard/").status_code == 401


def test_logging_out_clears_the_session(make_runtime: RuntimeFactory) -> None:
    client = client_for(dashboard_runtime(make_runtime))
    log_in(client)
    page = client.get("/dashboard/").get_data(as_text=True)

    response = client.post(
        "/dashboard/logout", data=form_fields(page, "/dashboard/logout")
    )

    assert response.status_code == 303
    assert client.get("/dashboard/").status_code == 401


def test_pages_carry_a_content_security_policy_and_no_cache(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    for response in (
        client.get("/dashboard/"),
        client.get("/dashboard/", headers=BEARER),
    ):
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert "script-src" not in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Frame-Options"] == "DENY"


# -- configuration ---------------------------------------------------------------------


def test_the_environment_admin_token_wins_over_the_file(tmp_path: Any) -> None:
    path = write_config(tmp_path, "", {"admin_token": "the-file-token-0123456"})

    config = load_config(
        path, environ={"AGENTMAIL_RUNNER_ADMIN_TOKEN": "the-env-token-0123456789"}
    )

    assert config.runner.admin_token is not None
    assert config.runner.admin_token.get_secret_value() == "the-env-token-0123456789"


def test_the_admin_token_is_read_through_an_env_reference(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "plugins.toml"
    path.write_text('[runner]\nadmin_token = { env = "DASH_TOKEN" }\n')
    monkeypatch.setenv("DASH_TOKEN", "referenced-token-0123456789")

    config = load_config(path, environ={})

    assert config.runner.admin_token is not None
    assert config.runner.admin_token.get_secret_value() == "referenced-token-0123456789"


def test_the_admin_token_is_redacted_where_the_configuration_is_shown(
    tmp_path: Any,
) -> None:
    path = write_config(tmp_path, "", {"admin_token": TOKEN})

    shown = redact(load_config(path, environ={}).runner)

    assert shown["admin_token"] == "***"
    assert TOKEN not in repr(shown)


def test_a_short_admin_token_is_refused_with_the_fix(tmp_path: Any) -> None:
    path = write_config(tmp_path, "", {"admin_token": "short"})

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert str(caught.value) == (
        "[runner] admin_token: is shorter than 16 "
        "characters; generate one with: python3 -c "
        "'import secrets; print(secrets.token_urlsafe(32))'"
    )


# -- events and their stories ----------------------------------------------------------


def test_the_events_page_lists_events_with_status_and_type(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime)
    payload = received(subject="Where is my parcel?")
    deliver(rt, payload)
    deliver(rt, load_payload("message-delivered.json"))
    rt.drain()

    page = client_for(rt).get("/dashboard/", headers=BEARER).get_data(as_text=True)

    assert payload["event_id"] in page
    assert "message.received" in page
    assert "message.delivered" in page
    assert "pat@example.org: Where is my parcel?" in page
    assert 'class="status status-done">done</span>' in page


def test_the_events_page_filters_by_status_type_and_search(
    make_runtime: RuntimeFactory,
) -> None:
    flaky = Flaky(permanent=True)
    rt = dashboard_runtime(make_runtime, extra_plugins=(("flaky", flaky),))
    failed = dead_letter(rt)
    flaky.broken = False
    fine = received(subject="Quarterly numbers")
    deliver(rt, fine)
    deliver(rt, load_payload("message-delivered.json"))
    rt.drain()
    client = client_for(rt)

    def keys(query: str) -> set[str]:
        page = client.get(f"/dashboard/?{query}", headers=BEARER).get_data(as_text=True)
        return set(re.findall(r'href="/dashboard/events/(\d+)"', page))

    assert keys("status=dead") == {str(failed)}
    delivered = load_payload("message-delivered.json")["event_id"]
    assert keys("type=message.delivered") == {str(event_pk(rt, delivered))}
    assert keys("q=quarterly") == {str(event_pk(rt, fine["event_id"]))}
    assert keys("q=no-such-text-anywhere") == set()
    assert keys("q=100%25") == set()  # LIKE wildcards are searched for literally


def test_the_events_page_pages_through_older_events(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime)
    for n in range(55):
        rt.store.insert_event(
            event_key=f"evt-{n}",
            event_id=f"evt-{n}",
            delivery_id=None,
            event_type="domain.verified",
            payload="{}",
            scheme="test",
        )
    client = client_for(rt)

    first = client.get("/dashboard/", headers=BEARER).get_data(as_text=True)
    older = re.search(r'href="(/dashboard/\?before=\d+)">older', first)
    assert older is not None
    second = client.get(older.group(1), headers=BEARER).get_data(as_text=True)

    assert "evt-54<" in first and "evt-5<" in first and "evt-4<" not in first
    assert "evt-4<" in second and "evt-0<" in second and "evt-54<" not in second
    assert "older" not in second.split('class="pages"')[1]


def test_an_events_story_shows_ledger_actions_and_idempotency_keys(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime)
    payload = received()
    deliver(rt, payload)
    rt.drain()
    row = rt.store.get_event(payload["event_id"])
    assert row is not None
    [action] = rt.store.actions_for(row.pk)

    page = client_for(rt).get(f"/dashboard/events/{row.pk}", headers=BEARER)
    text = page.get_data(as_text=True)

    assert page.status_code == 200
    assert "Verified by</dt><dd>svix" in text
    assert "<td>autoresponder</td>\n      <td>act</td>" in text
    assert f"<code>{action.idempotency_key}</code>" in text
    assert "reply" in text and 'status-done">done' in text
    assert "Thanks for your email about" in text  # the reply's parameters


def test_a_vetoed_action_shows_its_reason(make_runtime: RuntimeFactory) -> None:
    rt = dashboard_runtime(make_runtime, extra_plugins=(("vetoer", Vetoer()),))
    payload = received()
    deliver(rt, payload)
    rt.drain()
    row = rt.store.get_event(payload["event_id"])
    assert row is not None

    text = (
        client_for(rt)
        .get(f"/dashboard/events/{row.pk}", headers=BEARER)
        .get_data(as_text=True)
    )

    assert "Vetoed: vetoed by vetoer: pat asked not to be written to" in text


def test_a_failed_plugin_call_shows_its_error_and_attempts(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(
        make_runtime, extra_plugins=(("flaky", Flaky()),), max_attempts=2
    )
    pk = dead_letter(rt)

    text = (
        client_for(rt)
        .get(f"/dashboard/events/{pk}", headers=BEARER)
        .get_data(as_text=True)
    )

    assert "RuntimeError: the classifier is down" in text
    assert "gave up after 2 attempts" in text
    assert "This event is a dead letter." in text


def test_hostile_payload_text_is_escaped_everywhere(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime)
    payload = received(subject=HOSTILE, text=HOSTILE)
    payload["event_type"] = f"message.received{HOSTILE}"
    deliver(rt, payload)
    row = rt.store.get_event(payload["event_id"])
    assert row is not None
    client = client_for(rt)

    for path in (
        "/dashboard/",
        f"/dashboard/events/{row.pk}",
        f"/dashboard/?q={HOSTILE}",
    ):
        text = client.get(path, headers=BEARER).get_data(as_text=True)
        assert "<script>" not in text, path
        assert "&lt;script&gt;" in text, path


def test_a_page_says_so_when_the_store_is_down(
    make_runtime: RuntimeFactory, tmp_path: Any
) -> None:
    directory = tmp_path / "store"
    directory.mkdir()
    rt = dashboard_runtime(make_runtime, database=str(directory / "runner.db"))
    rt.store.engine.dispose()
    shutil.rmtree(directory)

    response = client_for(rt).get("/dashboard/", headers=BEARER)

    assert response.status_code == 503
    assert "The event store is unavailable, try again later: " in response.get_data(
        as_text=True
    )


def test_an_unknown_event_is_404(make_runtime: RuntimeFactory) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    assert client.get("/dashboard/events/999", headers=BEARER).status_code == 404


def test_a_number_no_event_can_have_is_404(make_runtime: RuntimeFactory) -> None:
    client = client_for(dashboard_runtime(make_runtime))
    huge = "99999999999999999999999"

    assert client.get(f"/dashboard/events/{huge}", headers=BEARER).status_code == 404
    retried = client.post(f"/dashboard/events/{huge}/retry", headers=BEARER)
    assert retried.status_code == 404


@pytest.mark.parametrize("page", ["/dashboard/", "/dashboard/dead"])
def test_older_than_a_number_no_event_can_have_is_the_newest_page(
    make_runtime: RuntimeFactory, page: str
) -> None:
    rt = dashboard_runtime(make_runtime)
    deliver(rt, {"event_id": "evt-untyped"})

    response = client_for(rt).get(
        f"{page}?before=99999999999999999999999", headers=BEARER
    )

    assert response.status_code == 200
    assert 'href="/dashboard/events/1"' in response.get_data(as_text=True)


@pytest.mark.parametrize("query", ["q=%00", "type=%00", "status=%00", "q=a%00b"])
def test_a_filter_with_a_nul_character_is_refused(
    make_runtime: RuntimeFactory, query: str
) -> None:
    rt = dashboard_runtime(make_runtime)
    deliver(rt, {"event_id": "evt-untyped"})

    response = client_for(rt).get(f"/dashboard/?{query}", headers=BEARER)

    assert response.status_code == 400
    assert "A filter cannot contain a NUL character (%00)." in response.get_data(
        as_text=True
    )


# -- payloads that cannot be read ------------------------------------------------------

# Authentic and under the size cap; Python's JSON decoder stops near 1,000 levels.
TOO_DEEP_TO_DECODE = b"[" * 200_000 + b"]" * 200_000
# Decoded, but deep enough to exhaust the stack of the code that walks an event.
TOO_DEEP_TO_WALK = (
    b'{"event_type": "message.received", "deep": ' + b"[" * 600 + b"]" * 600 + b"}"
)


def test_a_dead_letter_too_deep_to_read_is_shown_on_every_page(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime)
    deliver(rt, received(subject="Quarterly numbers"))
    answer = deliver(rt, TOO_DEEP_TO_DECODE).get_json()
    assert answer["status"] == "dead_letter"
    pk = event_pk(rt, answer["event"])
    client = client_for(rt)

    for path in (
        "/dashboard/",
        "/dashboard/?status=dead",
        "/dashboard/?q=%5B%5B%5B",
        "/dashboard/dead",
        f"/dashboard/events/{pk}",
    ):
        response = client.get(path, headers=BEARER)
        assert response.status_code == 200, path
        assert "the body is JSON nested deeper than 64 levels" in response.get_data(
            as_text=True
        )
    story = client.get(f"/dashboard/events/{pk}", headers=BEARER)
    assert f'<pre class="payload">{"[" * 1000}...</pre>' in story.get_data(as_text=True)


@pytest.mark.parametrize(
    "body", [TOO_DEEP_TO_DECODE, TOO_DEEP_TO_WALK], ids=["decode", "walk"]
)
def test_a_copy_of_a_payload_too_deep_to_read_is_buried_at_its_first_attempt(
    make_runtime: RuntimeFactory, body: bytes
) -> None:
    # A replay stored such a copy before replays of unusable events were refused.
    rt = dashboard_runtime(make_runtime)
    deliver(rt, body)
    copy = rt.store.replay_event(1, "replay-earlier")
    assert copy is not None
    client = client_for(rt)
    assert client.get("/dashboard/?status=pending", headers=BEARER).status_code == 200

    rt.drain()

    row = rt.store.get_event(copy)
    assert row is not None and row.status == DEAD
    assert row.last_error is not None
    assert row.last_error.endswith("JSON nested deeper than 64 levels")
    assert client.get("/dashboard/?status=dead", headers=BEARER).status_code == 200


def test_retrying_a_dead_letter_no_plugin_can_process_is_refused(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime)
    deliver(rt, b"not json")

    response = client_for(rt).post("/dashboard/events/1/retry", headers=BEARER)

    assert response.status_code == 409
    assert (
        "Event #1 cannot be retried: no plugin can process it (the body is not JSON: "
        "Expecting value: line 1 column 1 (char 0))." in response.get_data(as_text=True)
    )
    assert status_of(rt, 1) == DEAD


# -- dead letters ----------------------------------------------------------------------


def test_retrying_a_dead_letter_requeues_it_and_a_worker_finishes_it(
    make_runtime: RuntimeFactory,
) -> None:
    flaky = Flaky(permanent=True)
    rt = dashboard_runtime(make_runtime, extra_plugins=(("flaky", flaky),))
    pk = dead_letter(rt)
    client = client_for(rt)
    assert f'action="/dashboard/events/{pk}/retry"' in client.get(
        "/dashboard/dead", headers=BEARER
    ).get_data(as_text=True)
    flaky.broken = False
    generation = rt.wakeup.generation

    response = client.post(f"/dashboard/events/{pk}/retry", headers=BEARER)

    assert response.status_code == 303
    assert response.headers["Location"] == f"/dashboard/events/{pk}?retried=1"
    assert rt.wakeup.generation > generation
    assert rt.drain() == 1
    assert status_of(rt, pk) == DONE
    page = client.get(response.headers["Location"], headers=BEARER)
    assert "Requeued: a worker will take it up again." in page.get_data(as_text=True)


def test_retry_through_the_login_session_needs_the_csrf_token(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(
        make_runtime, extra_plugins=(("flaky", Flaky(permanent=True)),)
    )
    pk = dead_letter(rt)
    client = client_for(rt)
    log_in(client)
    page = client.get("/dashboard/dead").get_data(as_text=True)
    fields = form_fields(page, f"/dashboard/events/{pk}/retry")
    assert fields["csrf_token"]

    refused = client.post(f"/dashboard/events/{pk}/retry", data={})
    forged = client.post(f"/dashboard/events/{pk}/retry", data={"csrf_token": "x"})

    for response in (refused, forged):
        assert response.status_code == 403
        assert (
            "This form has expired or did not come from the dashboard: reload the "
            "page and try again." in response.get_data(as_text=True)
        )
    assert status_of(rt, pk) == DEAD
    accepted = client.post(f"/dashboard/events/{pk}/retry", data=fields)
    assert accepted.status_code == 303


def test_retrying_an_event_that_is_not_a_dead_letter_is_refused(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime)
    payload = received()
    deliver(rt, payload)
    rt.drain()
    row = rt.store.get_event(payload["event_id"])
    assert row is not None

    response = client_for(rt).post(f"/dashboard/events/{row.pk}/retry", headers=BEARER)

    assert response.status_code == 409
    assert (
        f"Event #{row.pk} is done: only a dead letter or a failing event can be "
        "retried." in response.get_data(as_text=True)
    )


# -- suppressions ----------------------------------------------------------------------


def test_the_suppressions_page_is_absent_without_the_bounce_tracker(
    make_runtime: RuntimeFactory,
) -> None:
    client = client_for(dashboard_runtime(make_runtime))

    assert client.get("/dashboard/suppressions", headers=BEARER).status_code == 404
    assert "Suppressions" not in client.get("/dashboard/", headers=BEARER).get_data(
        as_text=True
    )


def test_suppressions_are_listed_and_removed(make_runtime: RuntimeFactory) -> None:
    rt = dashboard_runtime(
        make_runtime, extra_plugins=(("bounce_tracker", SuppressionKeeper()),)
    )
    bounce = load_payload("message-bounced.json")
    deliver(rt, bounce)
    rt.drain()
    rt.store.state_set("bounce_tracker", "suppressed:other@example.net", True)
    rt.store.state_set("bounce_tracker", "sent:count", 3)  # not a suppression
    client = client_for(rt)

    page = client.get("/dashboard/suppressions", headers=BEARER).get_data(as_text=True)
    assert "full.mailbox@example.com" in page and "other@example.net" in page
    assert "bounced" in page and bounce["event_id"] in page
    assert "sent:count" not in page
    filtered = client.get("/dashboard/suppressions?q=FULL", headers=BEARER)
    assert "other@example.net" not in filtered.get_data(as_text=True)

    response = client.post(
        "/dashboard/suppressions/remove",
        data={"key": "full.mailbox@example.com"},
        headers=BEARER,
    )

    assert response.status_code == 303
    assert [k for k, _ in rt.store.state_items("bounce_tracker", "suppressed:")] == [
        "suppressed:other@example.net"
    ]
    after = client.get(response.headers["Location"], headers=BEARER).get_data(
        as_text=True
    )
    assert "Removed full.mailbox@example.com from the suppression list." in after


def test_the_bounce_trackers_own_suppressions_are_shown_and_removed(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime, plugins="[plugins.bounce_tracker]\n")
    complaint = load_payload("message-complained.json")
    complaint["complaint"]["recipients"] = ["Annoyed Person <Annoyed+news@Example.com>"]
    deliver(rt, complaint)
    settle(rt)
    client = client_for(rt)

    page = client.get("/dashboard/suppressions", headers=BEARER).get_data(as_text=True)
    fields = form_fields(page, "/dashboard/suppressions/remove")
    removed = client.post("/dashboard/suppressions/remove", data=fields, headers=BEARER)

    assert fields["key"] == "annoyed@example.com"
    assert complaint["event_id"] in page
    assert removed.status_code == 303
    assert rt.store.state_items("bounce_tracker", "suppressed:") == []


def test_removing_an_address_that_is_not_suppressed_is_404(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(
        make_runtime, extra_plugins=(("bounce_tracker", SuppressionKeeper()),)
    )

    response = client_for(rt).post(
        "/dashboard/suppressions/remove",
        data={"key": "nobody@example.com"},
        headers=BEARER,
    )

    assert response.status_code == 404
    assert "nobody@example.com is not on the suppression list." in response.get_data(
        as_text=True
    )


# -- plugins and activity --------------------------------------------------------------


def test_the_plugins_page_shows_each_plugins_health(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(
        make_runtime,
        extra_plugins=(("flaky", Flaky(permanent=True)),),
    )
    dead_letter(rt)

    text = (
        client_for(rt).get("/dashboard/plugins", headers=BEARER).get_data(as_text=True)
    )

    autoresponder, flaky = text.split("<strong>autoresponder</strong>")[1].split(
        "<strong>flaky</strong>"
    )
    assert 'status-healthy">healthy' in autoresponder
    assert 'status-failing">failing' in flaky
    assert "PermanentError: the mailbox is gone" in flaky
    assert "permanent 1" in flaky


def test_the_plugins_page_lists_plugins_that_failed_to_load(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(make_runtime, plugins="[plugins.not_installed]\n")

    text = (
        client_for(rt).get("/dashboard/plugins", headers=BEARER).get_data(as_text=True)
    )

    assert "Failed to load" in text
    assert "is configured in plugins.toml but not installed" in text


def test_the_activity_chart_counts_events_and_failures(
    make_runtime: RuntimeFactory,
) -> None:
    rt = dashboard_runtime(
        make_runtime, extra_plugins=(("flaky", Flaky(permanent=True)),)
    )
    dead_letter(rt)
    deliver(rt, load_payload("message-delivered.json"))
    rt.drain()

    text = (
        client_for(rt).get("/dashboard/activity", headers=BEARER).get_data(as_text=True)
    )

    assert "2 event(s) received in the last 24h, 1 of them failing or dead." in text
    assert text.count('<rect class="received"') == 24
    assert text.count('<rect class="failing"') == 1
    assert "<svg" in text and "<script" not in text


def test_build_chart_scales_to_round_ticks_and_places_the_latest_bucket_last() -> None:
    window = WINDOWS["6h"]

    chart = build_chart({0: (1, 0), 23: (5, 2)}, window, start=0.0)

    assert [t.text for t in chart.y_ticks] == ["0", "2", "4", "6"]
    assert len(chart.bars) == 24
    assert chart.bars[23].received_height == pytest.approx(
        (chart.bottom - chart.top) * 5 / 6
    )
    assert chart.bars[23].title == "1970-01-01 05:45 UTC: 5 event(s), 2 failing"
    assert (chart.received, chart.failing) == (6, 2)
