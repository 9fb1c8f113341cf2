"""The four built-in plugins on one event, as a user runs them: `receive` of a message
with a PDF invoice, the real SDKs against the loopback AgentMail and OpenAI doubles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.store import Store
from runner.testing.agentmail_double import AgentMailDouble
from runner.testing.openai_double import OpenAIDouble
from tests.conftest import SECRET, load_payload, write_config
from tests.plugins.pdfs import text_pdf

INVOICE_LINE = "Invoice 1042: consulting, total due 120.00 EUR"
DRAFT = "Dear Pat, invoice 1042 covers the consulting we did in November."
FINANCE = "accounts@finance.example"

PLUGINS = f"""
[plugins.pdf_extractor]

[plugins.router]
[[plugins.router.rules]]
name = "billing"
any = [{{ field = "pdf_text", contains = "invoice" }}]
labels = ["billing"]
forward = ["{FINANCE}"]
route = "billing"

[plugins.autoresponder]
model = "gpt-4o-mini"
api_key = "test"
request_timeout_seconds = 5
max_retries = 0
[[plugins.autoresponder.personas]]
name = "billing"
route = "billing"
system_prompt = "You answer billing questions for Example Ltd."

[plugins.bounce_tracker]
"""


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch):
    with OpenAIDouble() as running:
        monkeypatch.setenv("OPENAI_BASE_URL", running.base_url)
        yield running


def test_a_pdf_invoice_gets_one_llm_reply_a_label_and_nothing_to_a_suppressed_address(
    tmp_path: Path,
    double: AgentMailDouble,
    model: OpenAIDouble,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, PLUGINS)
    environment = {
        "AGENTMAIL_WEBHOOK_SECRET": SECRET,
        "AGENTMAIL_API_KEY": double.api_key,
        "AGENTMAIL_BASE_URL": double.url,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    payload = load_payload("message-received.json")
    message = payload["message"]
    [attachment] = message["attachments"]
    pdf = text_pdf([[INVOICE_LINE, "Payment within 30 days."]])
    attachment["size"] = len(pdf)
    double.add_message(
        message["inbox_id"],
        {"message_id": message["message_id"], "thread_id": message["thread_id"]},
    )
    double.add_attachment(
        message["inbox_id"],
        message["message_id"],
        attachment["attachment_id"],
        pdf,
        attachment["filename"],
    )
    model.reply(DRAFT)
    bounce = load_payload("message-bounced.json")
    bounce["bounce"].update(type="Permanent", sub_type="General")
    bounce["bounce"]["recipients"] = [{"address": FINANCE, "status": "bounced"}]
    cli_runner = CliRunner()

    for name, event in (("bounce.json", bounce), ("invoice.json", payload)):
        event_file = tmp_path / name
        event_file.write_text(json.dumps(event), encoding="utf-8")
        received = cli_runner.invoke(
            cli, ["--config", str(config), "receive", str(event_file)]
        )
        assert received.exit_code == 0, received.output

    [request] = model.completion_requests
    assert INVOICE_LINE in request.message_text("user")
    assert "You answer billing questions" in request.message_text("system")
    [reply] = double.sent
    assert reply.kind == "reply"
    assert reply.json["text"] == DRAFT
    assert [u.add_labels for u in double.label_updates] == [("billing",)]
    assert not any(FINANCE in json.dumps(sent.json) for sent in double.sent)

    store = Store(_database(config))
    row = store.get_event(payload["event_id"])
    assert row is not None and row.status == "done"
    forward = next(a for a in store.actions_for(row.pk) if a.kind == "forward")
    assert forward.status == "vetoed"
    assert f"vetoed by bounce_tracker: {FINANCE} is suppressed" in (forward.error or "")
    store.close()


def _database(config: Path) -> str:
    import tomllib

    return str(tomllib.loads(config.read_text(encoding="utf-8"))["runner"]["database"])
