"""The keyword router, through the full runner: signed webhooks in, rules evaluated,
labels, forwards and replies at the AgentMail double, posts at a loopback endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner import Context, Event, hookimpl
from runner.cli import cli
from runner.config import ConfigError, load_config
from runner.loader import call_one, load
from tests.conftest import CORPUS, deliver, write_config
from tests.plugins.webhook_receiver import WebhookReceiver

INBOX = "helpdesk@agentmail.to"
EXAMPLE = Path(__file__).resolve().parents[2] / "plugins" / "router" / "example.toml"


def received(
    subject: str = "Hello",
    body: str = "Just saying hello.",
    **fields: Any,
) -> dict[str, Any]:
    """A message.received payload with its own ids; ``fields`` replace message keys."""
    message_id = f"<{uuid.uuid4().hex}@mail.example.org>"
    message: dict[str, Any] = {
        "inbox_id": INBOX,
        "thread_id": str(uuid.uuid4()),
        "message_id": message_id,
        "from": "Pat Example <pat@example.org>",
        "to": [f"Help Desk <{INBOX}>"],
        "subject": subject,
        "text": body,
        "extracted_text": body,
        "labels": ["received", "unread"],
        "headers": {"Message-ID": message_id},
        "timestamp": "2026-11-30T09:14:03.000Z",
    }
    message.update(fields)
    return {
        "type": "event",
        "event_type": "message.received",
        "event_id": str(uuid.uuid4()),
        "message": message,
    }


def route_one(rt: Any, double: Any, payload: dict[str, Any]) -> None:
    """Deliver one signed payload (its message known to AgentMail) and process it."""
    double.add_message(INBOX, payload["message"])
    response = deliver(rt, payload)
    assert response.status_code == 200, response.get_data(as_text=True)
    rt.drain()


def drain_until_settled(rt: Any, event_id: str, timeout: float = 5.0) -> Any:
    """Process until the event is done or dead, waiting out the retry backoff."""
    deadline = time.monotonic() + timeout
    while True:
        rt.drain()
        row = rt.store.get_event(event_id)
        if row.status in ("done", "dead") or time.monotonic() > deadline:
            return row
        time.sleep(0.02)


class RouteWitness:
    """A later-stage plugin that records what the router left on the context."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str | None, list[str] | None]] = {}

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Context) -> None:
        self.seen[event.event_id] = (
            context.get("route"),
            context.get("matched_rules"),
        )


class PdfTextStub:
    """An enrich-stage plugin standing in for the PDF extractor."""

    def __init__(self, text: str) -> None:
        self.text = text

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def enrich(self, event: Event, context: Context) -> None:
        context.put("pdf_text", self.text)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as endpoint:
        yield endpoint


@pytest.fixture
def matched(make_runtime, double):
    """Route payloads under some rules; return each one's matched rule names."""

    def run(rules: str, *payloads: dict[str, Any], **runtime: Any) -> list[list[str]]:
        witness = RouteWitness()
        extra = (*runtime.pop("extra_plugins", ()), ("witness", witness))
        rt = make_runtime(f"[plugins.router]\n{rules}", extra_plugins=extra, **runtime)
        for payload in payloads:
            route_one(rt, double, payload)
        return [witness.seen[p["event_id"]][1] or [] for p in payloads]

    return run


# -- actions -------------------------------------------------------------------


def test_a_matching_rule_adds_its_labels_at_agentmail(make_runtime, double):
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "billing"
any = [{ field = "subject", contains = "invoice" }]
labels = ["billing", "finance"]
"""
    )
    payload = received(subject="Your Invoice 1042")

    route_one(rt, double, payload)

    [update] = double.label_updates
    assert update.message_id == payload["message"]["message_id"]
    assert update.add_labels == ("billing", "finance")
    assert "billing" in double.message(INBOX, update.message_id)["labels"]


def test_a_forward_rule_forwards_the_message_to_its_address(make_runtime, double):
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "legal"
any = [{ field = "body", contains = "subpoena" }]
forward = ["legal@example.com"]
"""
    )
    payload = received(body="Please find the subpoena attached.")

    route_one(rt, double, payload)

    [email] = double.sent
    assert email.kind == "forward"
    assert email.source_message_id == payload["message"]["message_id"]
    assert email.json["to"] == ["legal@example.com"]
    assert email.idempotency_key.startswith("amr-")


def test_a_reply_rule_fills_its_template_from_the_message(make_runtime, double):
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "refunds"
any = [{ field = "subject", contains = "refund" }]
reply = "We got '{subject}' from {sender_email}; rule {rule}, route {route}."
route = "refunds"
"""
    )

    route_one(rt, double, received(subject="Refund {please}"))

    [email] = double.sent
    assert email.kind == "reply"
    assert email.json["text"] == (
        "We got 'Refund {please}' from pat@example.org; rule refunds, route refunds."
    )
    assert email.json["headers"]["Auto-Submitted"] == "auto-replied"


def test_identical_actions_of_two_rules_are_done_once(make_runtime, double):
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "urgent"
any = [{ field = "subject", contains = "urgent" }]
forward = ["oncall@example.com"]
[[plugins.router.rules]]
name = "outage"
any = [{ field = "subject", contains = "outage" }]
forward = ["oncall@example.com"]
"""
    )

    route_one(rt, double, received(subject="URGENT: outage in eu-west"))

    [email] = double.sent
    assert email.json["to"] == ["oncall@example.com"]


def test_a_slack_endpoint_gets_a_text_payload_with_an_idempotency_key(
    make_runtime, double, receiver
):
    rt = make_runtime(
        f"""
[plugins.router]
[plugins.router.endpoints.billing]
kind = "slack"
url = "{receiver.url}/services/T0/B0/billing"
text = "New billing mail from {{sender}}: {{subject}}"
[[plugins.router.rules]]
name = "billing"
any = [{{ field = "subject", contains = "payment" }}]
post = ["billing"]
"""
    )

    route_one(rt, double, received(subject="Payment <failed> & retried"))

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/services/T0/B0/billing"
    assert request.json == {
        "text": "New billing mail from Pat Example &lt;pat@example.org&gt;: "
        "Payment &lt;failed&gt; &amp; retried"
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"].startswith("amr-")
    assert "authorization" not in request.headers
    assert double.sent == []


def test_a_json_endpoint_gets_the_message_the_rule_and_a_bearer_token(
    make_runtime, double, receiver, monkeypatch
):
    monkeypatch.setenv("ROUTER_TEST_HOOK_URL", f"{receiver.url}/hook")
    monkeypatch.setenv("ROUTER_TEST_HOOK_TOKEN", "hook-token-1")
    rt = make_runtime(
        """
[plugins.router]
[plugins.router.endpoints.ops]
kind = "json"
url = { env = "ROUTER_TEST_HOOK_URL" }
token = { env = "ROUTER_TEST_HOOK_TOKEN" }
headers = { X-Source = "agentmail" }
[[plugins.router.rules]]
name = "ops"
any = [{ field = "subject", contains = "disk full" }]
post = [{ endpoint = "ops", text = "{rule}: {subject}" }]
route = "ops"
"""
    )
    payload = received(
        subject="Disk full on db-2", attachments=[{"filename": "df.txt"}]
    )

    route_one(rt, double, payload)

    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.headers["authorization"] == "Bearer hook-token-1"
    assert request.headers["x-source"] == "agentmail"
    message = payload["message"]
    assert request.json == {
        "text": "ops: Disk full on db-2",
        "rule": "ops",
        "route": "ops",
        "event_id": payload["event_id"],
        "event_type": "message.received",
        "message": {
            "inbox_id": INBOX,
            "thread_id": message["thread_id"],
            "message_id": message["message_id"],
            "subject": "Disk full on db-2",
            "from": "pat@example.org",
            "to": [INBOX],
            "labels": ["received", "unread"],
            "attachments": ["df.txt"],
        },
    }


def test_a_github_endpoint_opens_an_issue_through_the_rest_api(
    make_runtime, double, receiver, monkeypatch
):
    monkeypatch.setenv("ROUTER_TEST_GITHUB_TOKEN", "ghp_test_token")
    rt = make_runtime(
        f"""
[plugins.router]
[plugins.router.endpoints.issues]
kind = "github"
repo = "acme/support"
token = {{ env = "ROUTER_TEST_GITHUB_TOKEN" }}
api_url = "{receiver.url}/api/v3/"
labels = ["from-email"]
[[plugins.router.rules]]
name = "bug"
any = [{{ field = "subject", contains = "bug", words = true }}]
post = [{{ endpoint = "issues", title = "[email] {{subject}}" }}]
"""
    )

    route_one(rt, double, received(subject="Bug: export crashes", body="Steps: 1, 2"))

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/api/v3/repos/acme/support/issues"
    assert request.headers["authorization"] == "Bearer ghp_test_token"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert request.headers["idempotency-key"].startswith("amr-")
    assert request.json == {
        "title": "[email] Bug: export crashes",
        "body": f"Reported by Pat Example <pat@example.org> to {INBOX}.\n\nSteps: 1, 2",
        "labels": ["from-email"],
    }


def test_an_endpoint_answering_500_is_retried_with_the_same_key_and_delivered_once(
    make_runtime, double, receiver
):
    rt = make_runtime(
        f"""
[plugins.router]
[plugins.router.endpoints.billing]
kind = "slack"
url = "{receiver.url}/billing"
[[plugins.router.rules]]
name = "billing"
any = [{{ field = "subject", contains = "payment" }}]
post = ["billing"]
labels = ["billing"]
"""
    )
    receiver.answer(500)
    payload = received(subject="Payment failed")
    double.add_message(INBOX, payload["message"])
    assert deliver(rt, payload).status_code == 200

    row = drain_until_settled(rt, payload["event_id"])

    assert row.status == "done"
    assert row.attempts == 2
    first, second = receiver.requests
    assert (first.status, second.status) == (500, 200)
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.json == second.json
    # The labels succeeded on the first attempt and are not applied again.
    assert len(double.label_updates) == 1


# -- the route for later plugins -------------------------------------------------


def test_the_route_and_matched_rules_are_visible_to_a_later_act_plugin(
    make_runtime, double
):
    witness = RouteWitness()
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "sales-lead"
any = [{ field = "subject", contains = "pricing" }]
route = "sales"
[[plugins.router.rules]]
name = "tag-all"
all = []
labels = ["seen-by-router"]
""",
        extra_plugins=(("witness", witness),),
    )
    lead, other = received(subject="Pricing for 40 seats"), received(subject="Hi")

    route_one(rt, double, lead)
    route_one(rt, double, other)

    assert witness.seen[lead["event_id"]] == ("sales", ["sales-lead", "tag-all"])
    assert witness.seen[other["event_id"]] == (None, ["tag-all"])


def test_a_message_no_rule_matches_gets_no_actions_and_no_route(make_runtime, double):
    witness = RouteWitness()
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "billing"
any = [{ field = "subject", contains = "invoice" }]
labels = ["billing"]
route = "billing"
""",
        extra_plugins=(("witness", witness),),
    )
    payload = received(subject="Lunch on Friday?")

    route_one(rt, double, payload)

    assert witness.seen[payload["event_id"]] == (None, [])
    assert double.label_updates == []
    assert double.sent == []


# -- order -----------------------------------------------------------------------


def test_rules_run_in_priority_order_and_the_first_route_wins(make_runtime, double):
    witness = RouteWitness()
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "general"
all = []
route = "general"
priority = 20
[[plugins.router.rules]]
name = "vip"
any = [{ field = "sender", domain = "example.org" }]
route = "vip"
priority = 5
[[plugins.router.rules]]
name = "also-vip"
any = [{ field = "sender", domain = "example.org" }]
route = "vip-2"
priority = 5
""",
        extra_plugins=(("witness", witness),),
    )
    payload = received()

    route_one(rt, double, payload)

    assert witness.seen[payload["event_id"]] == (
        "vip",
        ["vip", "also-vip", "general"],
    )


def test_a_matching_rule_with_stop_keeps_later_rules_from_acting(make_runtime, double):
    witness = RouteWitness()
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "spam-ish"
any = [{ field = "subject", contains = "winner" }]
labels = ["junk"]
stop = true
[[plugins.router.rules]]
name = "everything"
all = []
labels = ["triage"]
""",
        extra_plugins=(("witness", witness),),
    )
    stopped, normal = received(subject="You are a WINNER"), received()

    route_one(rt, double, stopped)
    route_one(rt, double, normal)

    assert witness.seen[stopped["event_id"]][1] == ["spam-ish"]
    assert witness.seen[normal["event_id"]][1] == ["everything"]
    assert [u.add_labels for u in double.label_updates] == [("junk",), ("triage",)]


# -- conditions ------------------------------------------------------------------


def test_whole_word_contains_does_not_match_inside_a_word(matched):
    rules = """
[[plugins.router.rules]]
name = "bug"
any = [{ field = "subject", contains = "bug", words = true }]
labels = ["bug"]
[[plugins.router.rules]]
name = "bug-anywhere"
any = [{ field = "subject", contains = "bug" }]
labels = ["bug-anywhere"]
"""
    assert matched(
        rules,
        received(subject="How do I debug this?"),
        received(subject="BUG: crash on save"),
        received(subject="a (bug)"),
    ) == [["bug-anywhere"], ["bug", "bug-anywhere"], ["bug", "bug-anywhere"]]


def test_contains_ignores_case_unless_told_not_to(matched):
    rules = """
[[plugins.router.rules]]
name = "exact"
any = [{ field = "body", contains = "ACME", case_sensitive = true }]
route = "exact"
"""
    assert matched(
        rules, received(body="ACME Corp here"), received(body="acme corp here")
    ) == [["exact"], []]


def test_regex_searches_the_field(matched):
    rules = r"""
[[plugins.router.rules]]
name = "order"
any = [{ field = "subject", regex = 'order\s+#?\d{4}\b' }]
route = "orders"
"""
    assert matched(
        rules,
        received(subject="Where is ORDER #1042?"),
        received(subject="order 12"),
    ) == [["order"], []]


def test_domain_matches_the_domain_and_its_subdomains_only(matched):
    rules = """
[[plugins.router.rules]]
name = "partner"
any = [{ field = "sender", domain = "partner.com" }]
route = "partner"
"""
    assert matched(
        rules,
        received(**{"from": "Ann <ann@partner.com>"}),
        received(**{"from": "bob@eu.PARTNER.com"}),
        received(**{"from": "eve@notpartner.com"}),
    ) == [["partner"], ["partner"], []]


def test_equals_compares_addresses_not_display_names(matched):
    rules = """
[[plugins.router.rules]]
name = "boss"
any = [{ field = "sender", equals = "Boss@Example.com" }]
route = "boss"
[[plugins.router.rules]]
name = "to-sales"
any = [{ field = "recipients", equals = "sales@agentmail.to" }]
route = "sales"
[[plugins.router.rules]]
name = "other-inbox"
any = [{ field = "inbox", equals = "sales@agentmail.to" }]
route = "sales-inbox"
"""
    assert matched(
        rules,
        received(**{"from": "The Boss <boss@example.com>"}),
        received(**{"from": "boss@example.com.evil.test"}),
        received(cc=["Sales <sales@agentmail.to>"]),
        received(inbox_id="sales@agentmail.to"),
    ) == [["boss"], [], ["to-sales"], ["other-inbox"]]


def test_any_and_all_groups_nest_with_not(matched):
    rules = """
[[plugins.router.rules]]
name = "escalate"
all = [
  { field = "sender", domain = "example.org" },
  { any = [
      { field = "subject", contains = "urgent" },
      { all = [
          { field = "body", contains = "down" },
          { not = { field = "body", contains = "not down" } },
      ] },
  ] },
]
route = "escalate"
"""
    assert matched(
        rules,
        received(subject="Urgent: login"),
        received(body="The site is down."),
        received(body="The site is not down, just slow."),
        received(subject="Urgent", **{"from": "x@elsewhere.net"}),
    ) == [["escalate"], ["escalate"], [], []]


def test_header_and_label_conditions(matched):
    rules = """
[[plugins.router.rules]]
name = "list"
any = [{ field = "header", name = "list-id", contains = "dev.lists.example.org" }]
route = "lists"
[[plugins.router.rules]]
name = "priority"
any = [{ field = "labels", equals = "important" }]
route = "priority"
"""
    assert matched(
        rules,
        received(headers={"List-Id": "<dev.lists.example.org>"}),
        received(labels=["received", "Important"]),
        received(headers={"Subject": "dev.lists.example.org"}),
    ) == [["list"], ["priority"], []]


def test_attachment_names_are_matched(matched):
    rules = r"""
[[plugins.router.rules]]
name = "invoices"
any = [{ field = "attachments", regex = '^invoice-\d+\.pdf$' }]
route = "invoices"
"""
    attachment = {
        "attachment_id": "a1",
        "filename": "Invoice-1042.pdf",
        "content_type": "application/pdf",
        "size": 100,
    }
    assert matched(
        rules, received(attachments=[attachment]), received(body="invoice-1.pdf")
    ) == [["invoices"], []]


def test_pdf_text_from_an_enrich_plugin_is_matched(matched):
    rules = """
[[plugins.router.rules]]
name = "contract"
any = [{ field = "pdf_text", contains = "termination clause" }]
route = "legal"
"""
    stub = PdfTextStub("contract.pdf\nSection 9: Termination Clause applies.")
    assert matched(rules, received(), extra_plugins=(("pdf_stub", stub),)) == [
        ["contract"]
    ]


def test_a_body_left_out_of_the_payload_is_fetched_before_matching(
    make_runtime, double
):
    witness = RouteWitness()
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "cancel"
any = [{ field = "body", contains = "cancel my subscription" }]
route = "retention"
""",
        extra_plugins=(("witness", witness),),
    )
    payload = received()
    for key in ("text", "extracted_text"):
        del payload["message"][key]
    double.add_message(
        INBOX, {**payload["message"], "text": "Please cancel my subscription."}
    )
    assert deliver(rt, payload).status_code == 200

    rt.drain()

    assert witness.seen[payload["event_id"]] == ("retention", ["cancel"])


def test_a_body_agentmail_no_longer_has_is_left_empty_and_routing_goes_on(
    make_runtime, double
):
    witness = RouteWitness()
    rt = make_runtime(
        """
[plugins.router]
[[plugins.router.rules]]
name = "cancel"
any = [{ field = "body", contains = "cancel" }]
route = "retention"
[[plugins.router.rules]]
name = "greeting"
any = [{ field = "subject", contains = "hello" }]
route = "greeting"
""",
        extra_plugins=(("witness", witness),),
    )
    payload = received(subject="Hello")
    for key in ("text", "extracted_text"):
        del payload["message"][key]
    assert deliver(rt, payload).status_code == 200  # the double never saw it: 404

    rt.drain()

    assert witness.seen[payload["event_id"]] == ("greeting", ["greeting"])
    assert rt.store.get_event(payload["event_id"]).status == "done"


# -- the guide's example -----------------------------------------------------------


def test_the_example_configuration_routes_billing_bugs_and_features(
    make_runtime, double, receiver, monkeypatch
):
    monkeypatch.setenv("SLACK_BILLING_WEBHOOK_URL", f"{receiver.url}/slack/billing")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_example")
    example = EXAMPLE.read_text(encoding="utf-8")
    assert 'api_url = "https://api.github.com"' in example
    witness = RouteWitness()
    rt = make_runtime(
        example.replace("https://api.github.com", f"{receiver.url}/github"),
        extra_plugins=(("witness", witness),),
    )
    billing = received(subject="Question about my last payment")
    bug = received(subject="Export fails", body="I get an error when I export.")
    feature = received(subject="Feature idea: dark mode")
    debug = received(subject="How to enable debug logs?")

    for payload in (billing, bug, feature, debug):
        route_one(rt, double, payload)

    assert [witness.seen[p["event_id"]][0] for p in (billing, bug, feature, debug)] == [
        "billing",
        "bug",
        "feature",
        None,
    ]
    slack, github = receiver.requests
    assert slack.path == "/slack/billing"
    assert slack.json == {
        "text": "Billing mail from Pat Example &lt;pat@example.org&gt;: "
        "Question about my last payment"
    }
    assert github.path == "/github/repos/example-org/support/issues"
    assert github.headers["authorization"] == "Bearer ghp_example"
    assert github.json["title"] == "[email] Export fails"
    assert github.json["labels"] == ["bug"]
    [update] = double.label_updates
    assert update.message_id == feature["message"]["message_id"]
    assert update.add_labels == ("feature-request",)
    assert double.sent == []


# -- configuration errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            """
[[plugins.router.rules]]
name = "orders"
any = [{ field = "subject", regex = "(order" }]
route = "orders"
""",
            r"\[plugins.router\] rules.0: rule 'orders': any.0.regex: '\(order' is "
            r"not a valid regular expression \(missing \), unterminated subpattern "
            r"at position 0\); fix the pattern \(escape a literal",
        ),
        (
            """
[[plugins.router.rules]]
name = "billing"
any = [{ field = "subject", contains = "bill" }]
post = ["slack-billing"]
""",
            r"rule 'billing' post: no endpoint 'slack-billing'; define "
            r"\[plugins.router.endpoints.slack-billing\] \(defined: none yet\)",
        ),
        (
            """
[[plugins.router.rules]]
name = "thanks"
all = []
reply = "Thanks {name}"
""",
            r"rule 'thanks': reply: unknown placeholder \{name\}; the placeholders "
            r"are: .*\{sender_email\}",
        ),
        (
            """
[[plugins.router.rules]]
name = "partner"
any = [{ field = "subject", domain = "partner.com" }]
route = "partner"
""",
            r"rule 'partner': any.0: domain compares addresses, but subject holds "
            r"none: use it on sender, recipients, inbox or a header, or use contains",
        ),
        (
            """
[[plugins.router.rules]]
name = "two"
any = [{ field = "subject", contains = "a", equals = "b" }]
route = "two"
""",
            r"rule 'two': any.0: give exactly one operator of contains, regex, "
            r"equals, domain \(found contains, equals\)",
        ),
        (
            """
[[plugins.router.rules]]
name = "idle"
any = [{ field = "subject", contains = "a" }]
""",
            r"rule 'idle': this rule does nothing: give labels, forward, reply, "
            r"post or route",
        ),
        (
            """
[[plugins.router.rules]]
name = "typo"
any = [{ field = "subjet", contains = "a" }]
route = "x"
""",
            r"rule 'typo': any.0.field: Input should be 'subject', 'body'",
        ),
        (
            """
[plugins.router.endpoints.issues]
kind = "github"
repo = "acme/support"
token = { env = "ROUTER_TEST_UNSET_TOKEN" }
""",
            r"endpoints.issues.github.token: .*environment variable "
            r"ROUTER_TEST_UNSET_TOKEN is not set: export it, or put it in .env",
        ),
        (
            """
[plugins.router.endpoints.chat]
kind = "teams"
url = "http://127.0.0.1:9/"
""",
            r'endpoints.chat: give kind = "slack", "json" or "github"',
        ),
    ],
    ids=[
        "bad-regex",
        "unknown-endpoint",
        "unknown-placeholder",
        "domain-on-subject",
        "two-operators",
        "no-action",
        "unknown-field",
        "unset-token",
        "unknown-kind",
    ],
)
def test_a_bad_table_stops_the_start_naming_the_rule_the_key_and_the_fix(
    make_runtime, table, message
):
    with pytest.raises(ConfigError, match=message):
        make_runtime(f"[plugins.router]\n{table}")


# -- route explain -------------------------------------------------------------------


EXPLAIN_RULES = """
[plugins.router]
[plugins.router.endpoints.issues]
kind = "github"
repo = "acme/support"
token = "ghp_never_printed"
[[plugins.router.rules]]
name = "vip"
any = [{ field = "sender", domain = "example.org" }]
labels = ["vip"]
stop = true
priority = 1
[[plugins.router.rules]]
name = "billing"
any = [
  { field = "subject", contains = "billing" },
  { field = "body", contains = "payment", words = true },
]
post = [{ endpoint = "issues", title = "Billing: {subject}" }]
route = "billing"
[[plugins.router.rules]]
name = "late"
all = []
labels = ["late"]
priority = 9
"""


@pytest.fixture
def route_command(tmp_path, monkeypatch) -> Iterator[Any]:
    """Register the router's commands on the real CLI as `main()` does."""
    monkeypatch.chdir(tmp_path)

    def register(plugins_toml: str) -> Path:
        path = write_config(tmp_path, plugins_toml)
        config = load_config(path, environ={})
        loaded = load(config, strict=True)
        impl = loaded.implementation("router", "register_commands")
        assert impl is not None
        call_one(
            impl,
            cli=cli,
            config=loaded.get("router").config,
            open_state=lambda: None,
        )
        return path

    yield register
    cli.commands.pop("route", None)


def test_route_explain_shows_every_rule_its_evidence_and_the_actions(route_command):
    config = route_command(EXPLAIN_RULES)

    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(config),
            "route",
            "explain",
            str(CORPUS / "message-received.json"),
        ],
    )

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "vip (priority 1, stop): MATCHED" in out
    assert 'yes sender domain "example.org"  <- "pat@example.org"' in out
    lines = out.splitlines()
    assert lines.index("  billing (priority 0): MATCHED") < lines.index(
        "  vip (priority 1, stop): MATCHED"
    )
    assert '    no  subject contains "billing"' in out
    assert (
        '    yes body contains "payment" (whole words)  <- "...the attached invoice '
        'shows a payment I do not recognise. Thanks,..."'
    ) in out
    assert "  late (priority 9): skipped: rule vip matched and stops here" in out
    assert "matched rules: billing, vip" in out
    assert "route: billing" in out
    assert (
        '  1. POST to issues (github): {"title": "Billing: Invoice question for '
        'order 1042"'
    ) in out
    assert "  2. add labels vip  [rule vip]" in out
    assert "ghp_never_printed" not in out
    assert "api.github.com" not in out


def test_route_explain_json_lists_the_verdict_tree(route_command, tmp_path):
    config = route_command(EXPLAIN_RULES)
    payload = tmp_path / "lunch.json"
    payload.write_text(
        json.dumps(received(subject="Lunch?", **{"from": "x@elsewhere.net"}))
    )
    pdf = tmp_path / "pdf.txt"
    pdf.write_text("unused")

    result = CliRunner().invoke(
        cli,
        [
            *("--config", str(config), "route", "explain", str(payload)),
            *("--json", "--pdf-text", str(pdf)),
        ],
    )

    assert result.exit_code == 0, result.output
    explanation = json.loads(result.stdout)
    assert [(r["name"], r["status"]) for r in explanation["rules"]] == [
        ("billing", "no match"),
        ("vip", "no match"),
        ("late", "matched"),
    ]
    assert explanation["rules"][0]["verdict"] == {
        "condition": "any",
        "matched": False,
        "conditions": [
            {"condition": 'subject contains "billing"', "matched": False},
            {"condition": 'body contains "payment" (whole words)', "matched": False},
        ],
    }
    assert explanation["route"] is None
    assert explanation["actions"] == [
        {"rule": "late", "kind": "add_labels", "labels": ["late"]}
    ]


def test_route_explain_refuses_an_event_without_a_message(route_command):
    config = route_command(EXPLAIN_RULES)
    bounced = CORPUS / "message-bounced.json"

    result = CliRunner().invoke(
        cli, ["--config", str(config), "route", "explain", str(bounced)]
    )

    assert result.exit_code == 1
    assert (
        f"Error: {bounced} is a message.bounced event; the router only routes "
        "message.received events, which carry a message"
    ) in result.stderr


@pytest.mark.parametrize("depth", [600, 200_000])
def test_route_explain_refuses_json_nested_too_deep(route_command, tmp_path, depth):
    config = route_command(EXPLAIN_RULES)
    deep = tmp_path / "deep.json"
    deep.write_text(
        '{"event_type": "message.received", "message": '
        + "[" * depth
        + "]" * depth
        + "}"
    )

    result = CliRunner().invoke(
        cli, ["--config", str(config), "route", "explain", str(deep)]
    )

    assert result.exit_code == 1
    assert f"Error: {deep} is JSON nested too deep to be a webhook payload" in (
        result.stderr
    )


def test_route_explain_runs_from_the_installed_command(tmp_path, receiver):
    example = EXAMPLE.read_text(encoding="utf-8")
    config = write_config(tmp_path, example)
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "SLACK_BILLING_WEBHOOK_URL": f"{receiver.url}/never-called",
        "GITHUB_TOKEN": "ghp_not_printed",
    }
    command = Path(sys.executable).with_name("agentmail-runner")

    result = subprocess.run(
        [
            *(str(command), "--config", str(config), "route", "explain"),
            str(CORPUS / "message-received.json"),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "  billing (priority 0): MATCHED" in result.stdout
    assert "  bug (priority 0): no match" in result.stdout
    assert "route: billing" in result.stdout
    assert "  1. POST to billing (slack):" in result.stdout
    assert "ghp_not_printed" not in result.stdout
    assert receiver.url not in result.stdout
    assert receiver.requests == []


def test_the_readme_shows_the_example_configuration():
    readme = (EXAMPLE.parent / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```toml\n", 1)[1].split("```", 1)[0]

    assert tomllib.loads(first_block) == tomllib.loads(
        EXAMPLE.read_text(encoding="utf-8")
    )
