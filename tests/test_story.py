"""An event's story, as `events show` and the dashboard tell it."""

from __future__ import annotations

import json

from runner import Context, Event, HttpPost, hookimpl
from runner.story import event_story, format_story
from tests.conftest import deliver, load_payload

WEBHOOK_URL = "https://hooks.slack.example/services/T000/B000/XYZsecretXYZ"


class Poster:
    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def route(self, event: Event, context: Context) -> list[HttpPost]:
        return [
            HttpPost(
                url=WEBHOOK_URL,
                json={"text": "new mail"},
                headers={"Authorization": "Bearer ghp_secret_token"},
                endpoint="billing",
            )
        ]


def test_a_story_never_shows_endpoint_urls_or_tokens(make_runtime):
    rt = make_runtime(
        "[plugins.poster]\n", extra_plugins=(("poster", Poster()),), dry_run=True
    )
    payload = load_payload("message-received.json")
    deliver(rt, payload)
    rt.drain()

    row = rt.store.get_event(payload["event_id"])
    story = event_story(rt.store, row)
    shown = json.dumps(story) + format_story(story)

    assert "XYZsecretXYZ" not in shown
    assert "ghp_secret_token" not in shown
    [action] = story["actions"]
    assert action["params"]["url"] == "https://hooks.slack.example/***"
    assert action["params"]["headers"] == {"Authorization": "***"}
    assert action["status"] == "recorded"
    # What is executed on a retry still has everything.
    [stored] = rt.store.actions_for(row.pk)
    assert stored.params["url"] == WEBHOOK_URL


class Enricher:
    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def enrich(self, event: Event, context: Context) -> None:
        context.put("seen", True)


def test_a_story_lists_the_calls_in_the_order_they_ran(make_runtime):
    # The enrich call plans nothing, so the ledger records it last, with the event's
    # status; the route call planned an action and was recorded at once.
    rt = make_runtime(
        "[plugins.poster]\n[plugins.enricher]\n",
        extra_plugins=(("poster", Poster()), ("enricher", Enricher())),
        dry_run=True,
    )
    payload = load_payload("message-received.json")
    deliver(rt, payload)
    rt.drain()

    story = event_story(rt.store, rt.store.get_event(payload["event_id"]))

    assert [(c["plugin"], c["stage"]) for c in story["ledger"]] == [
        ("enricher", "enrich"),
        ("poster", "route"),
    ]
