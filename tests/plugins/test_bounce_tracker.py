"""The bounce tracker through the full runner: signed outcome events in, suppressions
and inbox pauses kept in its state, and every email to a suppressed address or from a
paused inbox vetoed, whichever plugin proposed it."""

from __future__ import annotations

import csv
import io
import logging
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import plugins.bounce_tracker as bounce_tracker
from plugins.bounce_tracker import suppression_key
from runner import Event, PluginState, Send, hookimpl
from runner.config import ConfigError
from runner.story import event_story
from tests.conftest import TEMPLATES, deliver, load_payload

INBOX = "helpdesk@agentmail.to"
OTHER_INBOX = "sales@agentmail.to"

TRACKER = """
[plugins.bounce_tracker]
soft_bounce_limit = 3
soft_bounce_quiet_days = 14

[plugins.bounce_tracker.reputation]
window_hours = 24
min_volume = 4
max_bounce_rate = 0.25
"""

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


# -- payloads and helpers --------------------------------------------------------


def _event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def bounce(
    *addresses: str,
    type: Any = "Permanent",
    sub_type: Any = "General",
    inbox: str = INBOX,
) -> dict[str, Any]:
    payload = load_payload("message-bounced.json")
    payload["event_id"] = _event_id()
    payload["bounce"].update(
        inbox_id=inbox,
        type=type,
        sub_type=sub_type,
        recipients=[{"address": a, "status": "bounced"} for a in addresses],
    )
    return payload


def complaint(*addresses: str, inbox: str = INBOX) -> dict[str, Any]:
    payload = load_payload("message-complained.json")
    payload["event_id"] = _event_id()
    payload["complaint"].update(inbox_id=inbox, recipients=list(addresses))
    return payload


def outcome(event_type: str, *addresses: str, inbox: str = INBOX) -> dict[str, Any]:
    """A message.delivered or message.sent event for these recipients."""
    name = {"message.delivered": "delivery", "message.sent": "send"}[event_type]
    payload = load_payload(f"{event_type.replace('.', '-')}.json")
    payload["event_id"] = _event_id()
    payload[name].update(inbox_id=inbox, recipients=list(addresses))
    return payload


def received(sender: str, inbox: str = INBOX) -> dict[str, Any]:
    payload = load_payload("message-received.json")
    payload["event_id"] = _event_id()
    message = payload["message"]
    message.update(
        {
            "from": sender,
            "from_": sender,
            "inbox_id": inbox,
            "to": [inbox],
            "message_id": f"<{uuid.uuid4().hex}@mail.example.org>",
            "thread_id": uuid.uuid4().hex,
        }
    )
    message.pop("attachments")
    return payload


def process(rt: Any, *payloads: dict[str, Any]) -> None:
    for payload in payloads:
        response = deliver(rt, payload)
        assert response.status_code == 200, response.get_data(as_text=True)
    rt.drain()


def story(rt: Any, payload: dict[str, Any]) -> dict[str, Any]:
    row = rt.store.get_event(payload["event_id"])
    assert row is not None
    return event_story(rt.store, row)


def state(rt: Any) -> PluginState:
    return PluginState(rt.store, "bounce_tracker")


def suppressed(rt: Any) -> dict[str, dict[str, Any]]:
    return {
        key.removeprefix("suppressed:"): value
        for key, value in state(rt).items("suppressed:")
    }


def soft_count(rt: Any, address: str) -> int:
    record = state(rt).get(f"soft:{suppression_key(address)}") or {}
    return int(record.get("count", 0))


def replied_to(double: Any) -> list[str]:
    return [email.source_message_id for email in double.sent]


def cli(rt: Any, *args: str) -> Any:
    """Run `suppressions ...` on a fresh click group, against the runtime's store."""
    group = click.Group("agentmail-runner")
    bounce_tracker.register_commands(
        cli=group,
        config=rt.plugins.get("bounce_tracker").config,
        open_state=lambda: state(rt),
    )
    return CliRunner().invoke(group, ["suppressions", *args])


@pytest.fixture
def runtime(make_runtime: Any) -> Any:
    return make_runtime(TEMPLATES + TRACKER)


@pytest.fixture
def clock(time_machine: Any) -> Any:
    time_machine.move_to(START, tick=False)
    return time_machine


# -- permanent bounces and complaints --------------------------------------------


def test_a_permanent_bounce_suppresses_the_address_and_a_reply_to_it_is_vetoed(
    runtime, double
):
    process(runtime, bounce("pat@example.org"))

    message = received("Pat Example <pat@example.org>")
    process(runtime, message)

    assert double.sent == []
    [reply] = story(runtime, message)["actions"]
    assert reply["kind"] == "reply"
    assert reply["status"] == "vetoed"
    assert reply["error"].startswith(
        "vetoed by bounce_tracker: pat@example.org is suppressed since "
    )
    assert reply["error"].endswith(": permanent bounce (Permanent/General)")
    assert runtime.store.count_by_status() == {"done": 2}


def test_other_senders_still_get_their_replies(runtime, double):
    process(runtime, bounce("pat@example.org"))

    message = received("Sam <sam@example.org>")
    process(runtime, message)

    assert replied_to(double) == [message["message"]["message_id"]]


def test_the_seed_bounce_shape_suppresses_its_recipient(runtime, double):
    seed = load_payload("seed-message-bounced.json")
    process(runtime, seed)

    assert story(runtime, seed)["status"] == "done"
    record = suppressed(runtime)["invalid@example.com"]
    assert record["source"] == "permanent_bounce"
    assert record["inbox_id"] == ""
    assert record["event_id"] == "evt_789bnc"
    process(runtime, received("invalid@example.com"))
    assert double.sent == []


def test_a_complaint_suppresses_and_a_later_delivery_does_not_lift_it(runtime, double):
    process(runtime, complaint("annoyed@example.com"))
    process(runtime, outcome("message.delivered", "annoyed@example.com"))

    record = suppressed(runtime)["annoyed@example.com"]
    assert record["source"] == "complaint"
    assert record["reason"] == "complaint (abuse/spam)"
    message = received("annoyed@example.com")
    process(runtime, message)
    assert double.sent == []
    assert "complaint (abuse/spam)" in story(runtime, message)["actions"][0]["error"]


def test_a_complaint_replaces_an_earlier_permanent_bounce(runtime):
    process(runtime, bounce("pat@example.org"), complaint("pat@example.org"))

    assert suppressed(runtime)["pat@example.org"]["source"] == "complaint"


def test_a_plus_tag_and_letter_case_fold_into_one_suppression(runtime, double):
    process(runtime, bounce("Pat+Invoices@Example.ORG"))

    assert list(suppressed(runtime)) == ["pat@example.org"]
    assert suppressed(runtime)["pat@example.org"]["address"] == (
        "Pat+Invoices@Example.ORG"
    )
    process(
        runtime,
        received("pat@example.org"),
        received("PAT@EXAMPLE.ORG"),
        received("pat+news@example.org"),
    )
    assert double.sent == []


def test_suppression_keys_fold_tags_and_case_but_keep_everything_else():
    assert suppression_key("Pat Example <Pat+x+y@Example.ORG>") == "pat@example.org"
    assert suppression_key("first.last@example.org") == "first.last@example.org"
    assert suppression_key("+only@example.org") == "+only@example.org"
    assert suppression_key("not an address") == "not an address"


# -- transient bounces -----------------------------------------------------------


def test_transient_bounces_count_once_a_day_and_suppress_at_the_limit(
    runtime, double, clock
):
    full = "full.mailbox@example.com"
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))
    assert soft_count(runtime, full) == 1

    clock.shift(timedelta(days=1))
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))
    assert soft_count(runtime, full) == 2
    assert suppressed(runtime) == {}

    clock.shift(timedelta(days=1))
    last = bounce(full, type="Transient", sub_type="MailboxFull")
    process(runtime, last)

    record = suppressed(runtime)[full]
    assert record["source"] == "transient_bounces"
    assert (
        record["reason"] == "3 transient bounces on separate days (last: MailboxFull)"
    )
    assert story(runtime, last)["ledger"][0]["data"] == {
        "bounce_tracker": [{"address": full, "key": full, "outcome": "suppressed"}]
    }
    process(runtime, received(full))
    assert double.sent == []


def test_a_soft_count_is_forgotten_after_the_quiet_window(runtime, clock):
    full = "full.mailbox@example.com"
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))
    clock.shift(timedelta(days=1))
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))
    assert soft_count(runtime, full) == 2

    clock.shift(timedelta(days=15))
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))

    assert soft_count(runtime, full) == 1
    assert suppressed(runtime) == {}


def test_general_transient_bounces_such_as_out_of_office_do_not_count(runtime, clock):
    away = "away@example.com"
    for _ in range(4):
        process(runtime, bounce(away, type="Transient", sub_type="General"))
        clock.shift(timedelta(days=1))

    assert soft_count(runtime, away) == 0
    assert suppressed(runtime) == {}
    record = state(runtime).get("soft:away@example.com")
    assert record["last_bounce"]["sub_type"] == "General"


def test_a_delivery_resets_the_soft_count(runtime, clock):
    full = "full.mailbox@example.com"
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))
    clock.shift(timedelta(days=1))
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))

    process(runtime, outcome("message.delivered", full))
    assert soft_count(runtime, full) == 0

    clock.shift(timedelta(days=1))
    process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))
    assert soft_count(runtime, full) == 1
    assert suppressed(runtime) == {}


def test_a_delivery_lifts_a_suppression_that_transient_bounces_caused(
    runtime, double, clock
):
    full = "full.mailbox@example.com"
    for _ in range(3):
        process(runtime, bounce(full, type="Transient", sub_type="MailboxFull"))
        clock.shift(timedelta(days=1))
    assert full in suppressed(runtime)

    process(runtime, outcome("message.delivered", full))

    assert suppressed(runtime) == {}
    process(runtime, received(full))
    assert len(double.sent) == 1


def test_undetermined_and_unknown_bounce_types_are_recorded_verbatim(runtime, double):
    process(
        runtime,
        bounce("maybe@example.com", type="Undetermined", sub_type="Undetermined"),
        bounce("odd@example.com", type="Squishy", sub_type="Wobbly"),
        bounce("odd2@example.com", type="TRANSIENT", sub_type="NewSubType2030"),
    )

    assert suppressed(runtime) == {}
    records = dict(state(runtime).items("soft:"))
    assert records["soft:maybe@example.com"]["last_bounce"]["type"] == "Undetermined"
    assert records["soft:odd@example.com"]["last_bounce"] == {
        "type": "Squishy",
        "sub_type": "Wobbly",
        "at": records["soft:odd@example.com"]["updated_at"],
        "inbox_id": INBOX,
        "event_id": records["soft:odd@example.com"]["last_bounce"]["event_id"],
    }
    assert records["soft:odd@example.com"]["count"] == 0
    assert records["soft:odd2@example.com"]["count"] == 1
    assert runtime.store.count_by_status() == {"done": 3}


def test_malformed_bounces_never_fail_the_event(runtime):
    odd = bounce("x@example.com", type=None, sub_type=["a", "list"])
    odd["bounce"]["recipients"] = 42
    empty = {"type": "event", "event_type": "message.bounced", "event_id": _event_id()}
    strings = bounce(type="Permanent")
    strings["bounce"]["recipients"] = ["Name <str@example.com>", 7, {"email": ""}]

    process(runtime, odd, empty, strings)

    assert runtime.store.count_by_status() == {"done": 3}
    assert list(suppressed(runtime)) == ["str@example.com"]


# -- the veto, whichever plugin proposes the email -------------------------------


class _Announcer:
    """Another plugin that sends a new message to a fixed address for every mail."""

    def __init__(self, to: str, inbox: str | None = None) -> None:
        self.to = to
        self.inbox = inbox

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event) -> list[Send]:
        return [Send(to=(self.to,), subject="news", text="hi", inbox_id=self.inbox)]


def test_sends_from_any_plugin_to_a_suppressed_address_are_vetoed(make_runtime, double):
    rt = make_runtime(
        TRACKER, extra_plugins=(("announcer", _Announcer("Ann+x@B.org")),)
    )
    process(rt, complaint("ann@b.org"))

    message = received("sam@example.org")
    process(rt, message)

    assert double.sent == []
    [send] = story(rt, message)["actions"]
    assert send["plugin"] == "announcer"
    assert send["status"] == "vetoed"
    assert "vetoed by bounce_tracker: ann@b.org is suppressed" in send["error"]


# -- the reputation guard --------------------------------------------------------


def test_a_high_bounce_rate_pauses_the_inbox_loudly_until_it_is_resumed(
    runtime, double, caplog
):
    process(runtime, *(outcome("message.sent", f"r{i}@example.com") for i in range(4)))
    with caplog.at_level(logging.ERROR, logger="agentmail_runner"):
        process(runtime, bounce("r0@example.com"))
        assert not caplog.records
        process(runtime, bounce("r1@example.com"))

    [alarm] = caplog.records
    assert alarm.levelno == logging.ERROR
    assert alarm.getMessage() == (
        "automatic sends from inbox helpdesk@agentmail.to are paused: bounce rate "
        "50.00% (2 of 4 messages in the last 24 h) is above the threshold of 25.00%. "
        "Find the cause, then resume them with "
        "`agentmail-runner suppressions resume helpdesk@agentmail.to`"
    )

    paused = received("sam@example.org")
    elsewhere = received("sam@example.org", inbox=OTHER_INBOX)
    process(runtime, paused, elsewhere)
    assert replied_to(double) == [elsewhere["message"]["message_id"]]
    error = story(runtime, paused)["actions"][0]["error"]
    assert error.startswith(
        "vetoed by bounce_tracker: automatic sends from helpdesk@agentmail.to are "
        "paused since "
    )
    assert error.endswith(
        "resume with `agentmail-runner suppressions resume helpdesk@agentmail.to`"
    )

    result = cli(runtime, "resume", INBOX)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("automatic sends from helpdesk@agentmail.to resume")

    again = received("sam@example.org")
    process(runtime, again)
    assert replied_to(double)[-1] == again["message"]["message_id"]


def test_a_pause_covers_a_send_from_another_inbox_it_names(make_runtime, double):
    rt = make_runtime(
        TRACKER, extra_plugins=(("announcer", _Announcer("ok@example.org", INBOX)),)
    )
    process(rt, *(outcome("message.delivered", f"r{i}@x.org") for i in range(2)))
    process(rt, bounce("r2@x.org"), bounce("r3@x.org"))

    message = received("sam@example.org", inbox=OTHER_INBOX)
    process(rt, message)

    assert double.sent == []
    assert (
        "automatic sends from helpdesk@agentmail.to are paused"
        in (story(rt, message)["actions"][0]["error"])
    )


def test_a_high_complaint_rate_pauses_the_inbox(runtime):
    process(runtime, *(outcome("message.delivered", f"r{i}@x.org") for i in range(4)))
    process(runtime, complaint("r0@x.org"))

    [(inbox, paused)] = list(state(runtime).items("paused:"))
    assert inbox == f"paused:{INBOX}"
    assert paused["reason"].startswith("complaint rate 25.00% (1 of 4 messages")


def test_rates_below_the_minimum_volume_do_not_pause(runtime, double):
    process(runtime, outcome("message.sent", "a@x.org", "b@x.org"))
    process(runtime, bounce("a@x.org"), bounce("b@x.org"), bounce("c@x.org"))

    assert state(runtime).items("paused:") == []
    process(runtime, received("sam@example.org"))
    assert len(double.sent) == 1


def test_hours_past_the_window_and_quiet_soft_records_are_pruned(runtime, clock):
    process(
        runtime,
        outcome("message.sent", "a@x.org"),
        bounce("away@x.org", type="Transient", sub_type="General"),
    )
    assert len(state(runtime).items("window:")) == 1

    clock.shift(timedelta(days=15))
    process(runtime, outcome("message.sent", "b@x.org", inbox=OTHER_INBOX))

    assert [k for k, _ in state(runtime).items("window:")] == [
        f"window:{OTHER_INBOX}:{int((START + timedelta(days=15)).timestamp()) // 3600}"
    ]
    assert state(runtime).items("soft:") == []


# -- the suppressions command ----------------------------------------------------


def test_an_address_added_on_the_command_line_is_vetoed_until_removed(runtime, double):
    added = cli(runtime, "add", "Vip+x@Example.com", "--reason", "asked us to stop")
    assert added.exit_code == 0, added.output
    assert added.output == "suppressed Vip+x@Example.com (key vip@example.com)\n"

    first = received("vip@example.com")
    process(runtime, first)
    assert double.sent == []
    assert story(runtime, first)["actions"][0]["error"].endswith(": asked us to stop")

    removed = cli(runtime, "remove", "VIP@example.com")
    assert removed.exit_code == 0, removed.output
    assert removed.output == "removed Vip+x@Example.com (manual: asked us to stop)\n"
    process(runtime, received("vip@example.com"))
    assert len(double.sent) == 1


def test_adding_an_already_suppressed_address_keeps_the_first_reason(runtime):
    process(runtime, complaint("annoyed@example.com"))

    result = cli(runtime, "add", "annoyed@example.com")

    assert result.exit_code == 0
    assert result.output.startswith("already suppressed: annoyed@example.com is ")
    assert suppressed(runtime)["annoyed@example.com"]["source"] == "complaint"


def test_adding_something_that_is_not_an_address_is_refused(runtime):
    result = cli(runtime, "add", "not-an-address")

    assert result.exit_code == 2
    assert (
        "Invalid value for ADDRESS: 'not-an-address' is not one email address; "
        "write it as name@example.com"
    ) in result.output
    assert suppressed(runtime) == {}


def test_removing_an_address_that_is_not_suppressed_says_so(runtime):
    result = cli(runtime, "remove", "Nobody+x@Example.com")

    assert result.exit_code == 1
    assert result.output == (
        "Error: Nobody+x@Example.com is not suppressed (looked up as "
        "nobody@example.com); `agentmail-runner suppressions list` shows what is\n"
    )


def test_resuming_an_inbox_that_is_not_paused_says_so(runtime):
    result = cli(runtime, "resume", INBOX)

    assert result.exit_code == 1
    assert result.output == (
        "Error: inbox helpdesk@agentmail.to is not paused; "
        "`agentmail-runner suppressions list` shows the paused inboxes\n"
    )


def test_export_keeps_spreadsheets_from_running_what_mail_servers_wrote(runtime):
    cli(runtime, "add", "pat@example.org", "--reason", '=HYPERLINK("x","click")')
    cli(runtime, "add", "sam@example.org", "--reason", "-1+2")

    result = cli(runtime, "export")

    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [row["reason"] for row in rows] == ['\'=HYPERLINK("x","click")', "'-1+2"]
    assert [row["address"] for row in rows] == ["pat@example.org", "sam@example.org"]


def test_export_writes_every_suppression_as_csv(runtime, clock):
    process(runtime, bounce("Pat+x@Example.org"))
    clock.shift(timedelta(minutes=5))
    process(runtime, complaint("annoyed@example.com"))

    result = cli(runtime, "export")

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [row["key"] for row in rows] == ["pat@example.org", "annoyed@example.com"]
    pat = rows[0]
    assert pat == {
        "address": "Pat+x@Example.org",
        "key": "pat@example.org",
        "reason": "permanent bounce (Permanent/General)",
        "type": "Permanent",
        "sub_type": "General",
        "source": "permanent_bounce",
        "since": "2026-12-01T09:00:00Z",
        "inbox_id": INBOX,
        "event_id": pat["event_id"],
    }
    assert rows[1]["since"] == "2026-12-01T09:05:00Z"
    assert rows[1]["type"] == "abuse"


def test_list_shows_suppressions_and_paused_inboxes(runtime, clock):
    assert cli(runtime, "list").output == "no suppressed addresses\n"
    process(runtime, *(outcome("message.sent", f"r{i}@x.org") for i in range(4)))
    process(runtime, bounce("r0@x.org"), bounce("r1@x.org"))

    lines = cli(runtime, "list").output.splitlines()

    assert lines[0] == (
        "r0@x.org  [permanent_bounce]  since 2026-12-01 09:00 UTC  "
        "permanent bounce (Permanent/General)"
    )
    assert lines[2].startswith(
        "inbox helpdesk@agentmail.to: automatic sends paused since 2026-12-01 09:00 "
        "UTC: bounce rate 50.00%"
    )


def test_rates_show_each_inbox_over_the_window(runtime):
    process(runtime, *(outcome("message.sent", f"r{i}@x.org") for i in range(8)))
    rejected = load_payload("message-rejected.json")
    process(runtime, bounce("r0@x.org"), complaint("r1@x.org"), rejected)

    result = cli(runtime, "rates")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "last 24 h; pause above 25.00% permanent bounces or 0.10% complaints, "
        "from 4 messages",
        "helpdesk@agentmail.to: 8 messages, 1 permanent bounces (12.50%), "
        "1 complaints (12.50%), 0 other bounces, 1 rejected [PAUSED]",
    ]


def test_the_installed_command_lists_suppressions(runtime, tmp_path):
    process(runtime, bounce("pat@example.org"))
    command = Path(sys.executable).with_name("agentmail-runner")

    result = subprocess.run(
        [
            str(command),
            "--config",
            str(tmp_path / "plugins.toml"),
            "suppressions",
            "list",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pat@example.org  [permanent_bounce]  since ")


# -- configuration ---------------------------------------------------------------


def test_the_example_table_is_a_working_configuration(make_runtime, double):
    example = Path(bounce_tracker.__file__).with_name("example.toml")
    rt = make_runtime(TEMPLATES + example.read_text(encoding="utf-8"))

    config = rt.plugins.get("bounce_tracker").config
    assert config.soft_bounce_limit == 3
    assert config.reputation.max_complaint_rate == 0.001
    process(rt, bounce("pat@example.org"), received("pat@example.org"))
    assert double.sent == []


def test_a_bad_setting_names_the_plugin_and_the_key(make_runtime):
    with pytest.raises(
        ConfigError,
        match=r"\[plugins\.bounce_tracker\] soft_bounce_limit: Input should be "
        r"greater than or equal to 1",
    ):
        make_runtime("[plugins.bounce_tracker]\nsoft_bounce_limit = 0\n")
