"""The dashboard in headless Chromium, against the runner's real server and workers:
log in, read events and their stories, retry a dead letter, remove a suppression,
see the chart, and check that every page actually paints."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.runtime import Runtime
from runner.store import DEAD, DONE
from tests.conftest import LiveServer, RuntimeFactory, load_payload, sign
from tests.test_dashboard import TOKEN, Flaky, SuppressionKeeper, received

pytestmark = pytest.mark.browser

StartServer = Callable[..., LiveServer]


def post_webhook(server: LiveServer, payload: dict[str, Any]) -> None:
    body = httpx.Request("POST", "/", json=payload).content
    with httpx.Client() as http:
        response = http.post(f"{server.url}/webhook", content=body, headers=sign(body))
    assert response.status_code == 200, response.text


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the workers did not get there in time")
        time.sleep(0.02)


def status_of(rt: Runtime, event_id: str) -> str:
    row = rt.store.get_event(event_id)
    return row.status if row is not None else "missing"


def log_in(page: Any, server: LiveServer) -> None:
    page.goto(f"{server.url}/dashboard/")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Events')")


def distinct_colours(page: Any, png: bytes) -> int:
    """How many colours a screenshot has, counted by the browser's own decoder."""
    data = "data:image/png;base64," + base64.b64encode(png).decode()
    checker = page.context.new_page()
    try:
        count: int = checker.evaluate(
            """async (src) => {
                const img = new Image();
                img.src = src;
                await img.decode();
                const canvas = document.createElement('canvas');
                canvas.width = img.width;
                canvas.height = img.height;
                const ctx = canvas.getContext('2d');
                ctx.drawImage(img, 0, 0);
                const pixels = ctx.getImageData(0, 0, img.width, img.height).data;
                const seen = new Set();
                for (let i = 0; i < pixels.length; i += 4 * 7) {
                    seen.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
                }
                return seen.size;
            }""",
            data,
        )
    finally:
        checker.close()
    return count


@pytest.fixture
def server(make_runtime: RuntimeFactory, live_server: StartServer) -> Any:
    """A live runner with the dashboard on, and a plugin that fails until fixed."""
    flaky = Flaky(permanent=True)
    flaky.broken = False
    rt = make_runtime(
        admin_token=TOKEN,
        extra_plugins=(("flaky", flaky), ("bounce_tracker", SuppressionKeeper())),
    )
    started = live_server(rt, workers=2)
    started.flaky = flaky  # type: ignore[attr-defined]
    return started


def test_a_browser_without_the_token_gets_the_login_form(
    page: Any, server: LiveServer
) -> None:
    response = page.goto(f"{server.url}/dashboard/dead")

    assert response.status == 401
    assert page.is_visible("#token")
    page.fill("#token", "not-the-admin-token")
    page.click("button[type=submit]")
    assert page.inner_text("[role=alert]") == "That is not the admin token."


def test_the_events_list_shows_real_events_and_filters_them(
    page: Any, server: LiveServer, tmp_path: Path
) -> None:
    rt = server.rt
    hello, invoice = received(subject="Hello there"), received(subject="Invoice 77")
    for payload in (hello, invoice, load_payload("message-delivered.json")):
        post_webhook(server, payload)
    wait_until(lambda: rt.store.count_by_status() == {DONE: 3})

    log_in(page, server)
    rows = page.locator("table.events tbody tr")
    assert rows.count() == 3
    assert "pat@example.org: Invoice 77" in rows.nth(1).inner_text()
    page.screenshot(path=str(tmp_path / "events.png"), full_page=True)

    page.select_option("select[name=type]", "message.delivered")
    page.click("form.filters button[type=submit]")
    assert rows.count() == 1
    assert "message.delivered" in rows.first.inner_text()

    page.goto(f"{server.url}/dashboard/")
    page.fill("input[name=q]", "invoice 77")
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**q=invoice+77**")
    assert rows.count() == 1
    assert invoice["event_id"] in rows.first.inner_text()


def test_an_events_story_shows_its_ledger_and_actions_with_keys(
    page: Any, server: LiveServer, tmp_path: Path
) -> None:
    rt = server.rt
    payload = received()
    post_webhook(server, payload)
    wait_until(lambda: status_of(rt, payload["event_id"]) == DONE)
    row = rt.store.get_event(payload["event_id"])
    assert row is not None
    [action] = rt.store.actions_for(row.pk)

    log_in(page, server)
    page.click(f"a[href='/dashboard/events/{row.pk}'] >> nth=0")
    page.wait_for_selector("table.actions")

    ledger = page.inner_text("table.ledger")
    assert "flaky\troute\tsucceeded" in ledger
    assert "autoresponder\tact\tsucceeded" in ledger
    actions = page.inner_text("table.actions")
    assert "reply\tautoresponder.act [0]\tdone" in actions
    assert action.idempotency_key in actions
    assert page.inner_text(".facts").count("svix") == 1
    page.screenshot(path=str(tmp_path / "story.png"), full_page=True)


def test_retrying_a_dead_letter_through_the_page_gets_it_processed(
    page: Any, server: LiveServer
) -> None:
    rt = server.rt
    server.flaky.broken = True  # type: ignore[attr-defined]
    payload = received()
    post_webhook(server, payload)
    wait_until(lambda: status_of(rt, payload["event_id"]) == DEAD)
    server.flaky.broken = False  # type: ignore[attr-defined]

    log_in(page, server)
    page.click("nav >> text=Dead letters")
    assert "PermanentError: the mailbox is gone" in page.inner_text("table.dead")
    page.click("table.dead button.retry")

    assert page.inner_text("[role=status]") == (
        "Requeued: a worker will take it up again."
    )
    wait_until(lambda: status_of(rt, payload["event_id"]) == DONE)
    page.click("nav >> text=Dead letters")
    assert page.inner_text("main .empty") == "No dead letters."


def test_removing_a_suppression_through_the_page(page: Any, server: LiveServer) -> None:
    rt = server.rt
    bounce = load_payload("message-bounced.json")
    post_webhook(server, bounce)
    wait_until(lambda: status_of(rt, bounce["event_id"]) == DONE)
    rt.store.state_set("bounce_tracker", "suppressed:kept@example.net", True)

    log_in(page, server)
    page.click("nav >> text=Suppressions")
    assert page.locator("table.suppressions tbody tr").count() == 2
    page.click("button[aria-label='Remove full.mailbox@example.com']")

    assert page.inner_text("[role=status]") == (
        "Removed full.mailbox@example.com from the suppression list."
    )
    assert page.locator("table.suppressions tbody tr").count() == 1
    assert [k for k, _ in rt.store.state_items("bounce_tracker", "suppressed:")] == [
        "suppressed:kept@example.net"
    ]


def test_the_activity_chart_renders_bars_for_events_and_failures(
    page: Any, server: LiveServer, tmp_path: Path
) -> None:
    rt = server.rt
    server.flaky.broken = True  # type: ignore[attr-defined]
    failing = received()
    post_webhook(server, failing)
    wait_until(lambda: status_of(rt, failing["event_id"]) == DEAD)
    server.flaky.broken = False  # type: ignore[attr-defined]
    post_webhook(server, load_payload("message-delivered.json"))
    wait_until(lambda: rt.store.count_by_status().get(DONE) == 1)

    log_in(page, server)
    page.click("nav >> text=Activity")

    chart = page.locator("figure.chart svg")
    box = chart.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 150
    bars = page.locator("rect.received")
    assert bars.count() == 24
    heights = [float(bars.nth(i).get_attribute("height") or 0) for i in range(24)]
    # The two events are in the latest bucket, or the one before if the hour turned.
    assert max(heights) > 50 and heights.index(max(heights)) >= 22
    assert sorted(heights)[-2] == 0
    assert page.locator("rect.failing").count() == 1
    page.screenshot(path=str(tmp_path / "activity.png"), full_page=True)


def test_every_page_paints_something(
    page: Any, server: LiveServer, tmp_path: Path
) -> None:
    rt = server.rt
    server.flaky.broken = True  # type: ignore[attr-defined]
    hostile = received(subject="<script>alert('x')</script> & <b>bold</b>")
    post_webhook(server, hostile)
    post_webhook(server, load_payload("message-bounced.json"))
    wait_until(lambda: rt.store.count_by_status() == {DEAD: 1, DONE: 1})
    page.goto(f"{server.url}/dashboard/login")
    shots = {"login": page.screenshot(path=str(tmp_path / "login.png"))}

    log_in(page, server)
    for name in ("Events", "Dead letters", "Activity", "Plugins", "Suppressions"):
        page.click(f"nav >> text={name}")
        page.wait_for_selector(f"h1:has-text('{name}')")
        path = tmp_path / f"{name.lower().replace(' ', '-')}.png"
        shots[name] = page.screenshot(path=str(path), full_page=True)
    page.click("nav >> text=Dead letters")
    page.click("table.dead a >> nth=0")
    page.click("text=as delivered")
    shots["story"] = page.screenshot(path=str(tmp_path / "story.png"), full_page=True)

    assert "<script>alert('x')</script>" in page.inner_text("pre.payload")
    for name, png in shots.items():
        assert distinct_colours(page, png) >= 5, name
