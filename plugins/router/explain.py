"""``agentmail-runner route explain PAYLOAD.json``: why the router acts as it does.

It evaluates the configured rules against a payload exactly as the ``route`` hook
does, and prints every rule with its verdict, the condition and text that decided it,
and the actions that would run. Nothing is sent and nothing is stored. Endpoint URLs
and headers are never printed: they often hold secrets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from runner import Event, HttpPost, printable

from .config import RouterConfig
from .planning import Planned, plan
from .rules import Decision, Facts, RuleResult, Verdict, decide

__all__ = ["add_commands", "explain_event", "format_explanation"]


def add_commands(cli: click.Group, config: RouterConfig) -> None:
    """Add the ``route`` group, with ``explain``, to the command line."""

    @cli.group("route")
    def route_group() -> None:
        """Inspect the keyword router."""

    @route_group.command("explain")
    @click.argument(
        "payload", type=click.Path(exists=True, dir_okay=False, path_type=Path)
    )
    @click.option(
        "--pdf-text",
        "pdf_text_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A text file to use as the PDF extractor's pdf_text.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def explain(payload: Path, pdf_text_file: Path | None, as_json: bool) -> None:
        """Show every rule's verdict on PAYLOAD and the actions that would run."""
        event = _read_event(payload)
        pdf_text = pdf_text_file.read_text(encoding="utf-8") if pdf_text_file else ""
        explanation = explain_event(config, event, pdf_text=pdf_text)
        if as_json:
            click.echo(json.dumps(explanation, indent=2))
        else:
            click.echo(format_explanation(explanation))


def _read_event(path: Path) -> Event:
    try:
        payload = json.loads(path.read_bytes())
        if not isinstance(payload, dict):
            raise click.ClickException(
                f"{path} is not a JSON object (a webhook payload)"
            )
        event = Event(payload)
    except ValueError as exc:
        raise click.ClickException(f"{path} is not JSON: {exc}") from exc
    except RecursionError as exc:  # the runner keeps such deliveries as dead letters
        raise click.ClickException(
            f"{path} is JSON nested too deep to be a webhook payload"
        ) from exc
    if not event.matches("message.received") or event.message is None:
        raise click.ClickException(
            f"{path} is a {event.event_type or 'untyped'} event; the router only "
            "routes message.received events, which carry a message"
        )
    return event


def explain_event(
    config: RouterConfig, event: Event, *, pdf_text: str = ""
) -> dict[str, Any]:
    """The router's reasoning about one event, JSON-ready."""
    message = event.message
    if message is None:
        raise ValueError("the event carries no message")
    facts = Facts.of(message, body=message.body_text, pdf_text=pdf_text)
    decision = decide(config, facts)
    notes = []
    if message.body_missing:
        notes.append(
            "the payload carries no body; when it runs, the router fetches it from "
            "AgentMail if a rule or template needs it"
        )
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "subject": message.subject,
        "sender": str(message.sender) if message.sender else "",
        "rules": [_rule(result) for result in decision.results],
        "matched_rules": [rule.name for rule in decision.matched],
        "route": decision.route,
        "actions": _actions(config, decision, event, facts),
        "notes": notes,
    }


def _rule(result: RuleResult) -> dict[str, Any]:
    rule = result.rule
    if result.verdict is None:
        status = "skipped"
    else:
        status = "matched" if result.verdict.matched else "no match"
    return {
        "name": rule.name,
        "priority": rule.priority,
        "stop": rule.stop,
        "status": status,
        "stopped_by": result.stopped_by,
        "verdict": _verdict(result.verdict) if result.verdict else None,
    }


def _verdict(verdict: Verdict) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "condition": verdict.condition,
        "matched": verdict.matched,
    }
    if verdict.evidence:
        shown["text"] = verdict.evidence
    if verdict.children or verdict.condition in ("any", "all"):
        shown["conditions"] = [_verdict(child) for child in verdict.children]
    return shown


def _actions(
    config: RouterConfig, decision: Decision, event: Event, facts: Facts
) -> list[dict[str, Any]]:
    assert event.message is not None
    return [
        _action(config, planned)
        for planned in plan(config, decision, event, event.message, facts)
    ]


def _action(config: RouterConfig, planned: Planned) -> dict[str, Any]:
    action = planned.action
    if isinstance(action, HttpPost):
        # The URL and the headers stay out: they often carry a token.
        shown: dict[str, Any] = {
            "kind": action.kind,
            "endpoint": action.endpoint,
            "endpoint_kind": config.endpoints[action.endpoint].kind,
            "json": action.json,
        }
    else:
        shown = {k: v for k, v in action.to_dict().items() if v not in (None, [], {})}
        shown.pop("reply_all", None)
    return {"rule": planned.rule, **shown}


# -- text ----------------------------------------------------------------------


def format_explanation(explanation: dict[str, Any]) -> str:
    lines = [
        f"event {explanation['event_id'] or '(no event_id)'} "
        f"({explanation['event_type']})",
        f"  subject  {explanation['subject'] or '(none)'}",
        f"  from     {explanation['sender'] or '(nobody)'}",
    ]
    lines += [f"  note     {note}" for note in explanation["notes"]]
    lines += ["", "rules, in the order they run:"]
    if not explanation["rules"]:
        lines.append("  (no rules configured)")
    for rule in explanation["rules"]:
        lines += _format_rule(rule)
    lines += [
        "",
        f"matched rules: {', '.join(explanation['matched_rules']) or 'none'}",
        f"route: {explanation['route'] or 'none'}",
        "actions that would run:",
    ]
    if not explanation["actions"]:
        lines.append("  (none)")
    for number, action in enumerate(explanation["actions"], 1):
        lines.append(f"  {number}. {_format_action(action)}")
    # The subject, the evidence and the replies are the sender's text.
    return "\n".join(printable(line) for line in lines)


def _format_rule(rule: dict[str, Any]) -> list[str]:
    stop = ", stop" if rule["stop"] else ""
    head = f"  {rule['name']} (priority {rule['priority']}{stop}): "
    if rule["status"] == "skipped":
        return [head + f"skipped: rule {rule['stopped_by']} matched and stops here"]
    lines = [head + ("MATCHED" if rule["status"] == "matched" else "no match")]
    lines += _format_verdict(rule["verdict"], depth=2)
    return lines


def _format_verdict(verdict: dict[str, Any], depth: int) -> list[str]:
    indent = "  " * depth
    mark = "yes" if verdict["matched"] else "no "
    condition = verdict["condition"]
    if "conditions" in verdict:
        label = {"any": "any of:", "all": "all of:", "not": "not:"}[condition]
        if not verdict["conditions"]:
            label += " (nothing: every message matches)"
        lines = [f"{indent}{mark} {label}"]
        for child in verdict["conditions"]:
            lines += _format_verdict(child, depth + 1)
        return lines
    found = f"  <- {json.dumps(verdict['text'])}" if "text" in verdict else ""
    return [f"{indent}{mark} {condition}{found}"]


def _format_action(action: dict[str, Any]) -> str:
    by = f"  [rule {action['rule']}]"
    kind = action["kind"]
    if kind == "http_post":
        document = json.dumps(action["json"], ensure_ascii=False)
        if len(document) > 300:
            document = document[:300] + "..."
        where = f"{action['endpoint']} ({action['endpoint_kind']})"
        return f"POST to {where}: {document}{by}"
    if kind == "add_labels":
        return f"add labels {', '.join(action['labels'])}{by}"
    if kind == "forward":
        return f"forward to {', '.join(action['to'])}{by}"
    if kind == "reply":
        return f"reply {json.dumps(action['text'], ensure_ascii=False)}{by}"
    return f"{kind}{by}"
