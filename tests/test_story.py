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
