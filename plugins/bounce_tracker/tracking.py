"""What each delivery-outcome event means for the addresses and the inbox it names.

Bounce types are the ones AgentMail passes on from Amazon SES: ``Permanent``
(sub-types General, NoEmail, Suppressed, OnAccountSuppressionList), ``Transient``
(General, MailboxFull, MessageTooLarge, ContentRejected, AttachmentRejected) and
``Undetermined``. A transient ``General`` bounce is typically an out-of-office reply.
Types and sub-types are compared without regard to case and kept as delivered; one the
tracker does not know is recorded and otherwise ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runner import Event, parse_addresses

from .addresses import display_address, suppression_key
from .book import COMPLAINT, PERMANENT_BOUNCE, Book, Suppression, resume_command

__all__ = ["EVENT_TYPES", "Report", "handle"]

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]
Outcome = dict[str, str]


@dataclass(frozen=True)
class Report:
    """The parts of a bounce, complaint, delivery or send that the tracker reads."""

    type: str
    sub_type: str
    recipients: tuple[str, ...]
    inbox_id: str
    event_id: str

    @classmethod
    def of(cls, event: Event) -> Report:
        obj = event.object

        def text(*names: str) -> str:
            value = next((obj[n] for n in names if obj.get(n) is not None), "")
            return str(value).strip()

        return cls(
            type=text("type", "bounce_type"),
            sub_type=text("sub_type", "bounce_sub_type"),
            recipients=_recipients(obj.get("recipients")),
            inbox_id=event.inbox_id,
            event_id=event.event_id or event.delivery_id,
        )


def _recipients(raw: Any) -> tuple[str, ...]:
    """Addresses from a list of strings or of ``{address, status}`` objects."""
    if not isinstance(raw, str | Mapping | list | tuple):
        return ()
    return tuple(a.email for a in parse_addresses(raw))


def _bounced(report: Report, book: Book, now: float, log: Log) -> list[Outcome]:
    kind = report.type.lower()
    if kind not in ("permanent", "transient", "undetermined"):
        log.info(
            "bounce type %r (sub-type %r) is not one the tracker knows; recorded only",
            report.type,
            report.sub_type,
        )
    counts = kind == "transient" and book.config.counts_toward_limit(report.sub_type)
    outcomes = []
    for address in report.recipients:
        if kind == "permanent":
            outcome = _suppress(address, report, book, now, PERMANENT_BOUNCE)
        else:
            outcome = book.note_bounce(
                address,
                bounce_type=report.type,
                sub_type=report.sub_type,
                counts=counts,
                now=now,
                inbox_id=report.inbox_id,
                event_id=report.event_id,
            )
        outcomes.append(_outcome(address, outcome))
    counter = "bounced" if kind == "permanent" else "soft_bounced"
    book.add_to_window(report.inbox_id, counter, len(report.recipients), now)
    _guard(report.inbox_id, book, now, log)
    return outcomes


def _complained(report: Report, book: Book, now: float, log: Log) -> list[Outcome]:
    outcomes = [
        _outcome(address, _suppress(address, report, book, now, COMPLAINT))
        for address in report.recipients
    ]
    book.add_to_window(report.inbox_id, "complained", len(report.recipients), now)
    _guard(report.inbox_id, book, now, log)
    return outcomes


def _delivered(report: Report, book: Book, now: float, log: Log) -> list[Outcome]:
    book.add_to_window(report.inbox_id, "delivered", len(report.recipients), now)
    return [_outcome(a, book.note_delivery(a)) for a in report.recipients]


def _sent(report: Report, book: Book, now: float, log: Log) -> list[Outcome]:
    book.add_to_window(report.inbox_id, "sent", len(report.recipients) or 1, now)
    return []


def _rejected(report: Report, book: Book, now: float, log: Log) -> list[Outcome]:
    # A rejection happens before anything leaves AgentMail and names no recipient:
    # it costs no reputation, so it is only counted, for `suppressions rates`.
    book.add_to_window(report.inbox_id, "rejected", 1, now)
    return []


def _suppress(address: str, report: Report, book: Book, now: float, source: str) -> str:
    what = "complaint" if source == COMPLAINT else "permanent bounce"
    detail = "/".join(part for part in (report.type, report.sub_type) if part)
    recorded = book.suppress(
        Suppression(
            key=suppression_key(address),
            address=display_address(address),
            source=source,
            reason=f"{what} ({detail})" if detail else what,
            type=report.type,
            sub_type=report.sub_type,
            since=now,
            inbox_id=report.inbox_id,
            event_id=report.event_id,
        )
    )
    return "suppressed" if recorded else "already suppressed"


def _guard(inbox: str, book: Book, now: float, log: Log) -> None:
    reason = book.check_reputation(inbox, now)
    if reason is not None:
        log.error(
            "automatic sends from inbox %s are paused: %s. Find the cause, then "
            "resume them with `%s`",
            inbox,
            reason,
            resume_command(inbox),
        )


def _outcome(address: str, outcome: str) -> Outcome:
    return {"address": address, "key": suppression_key(address), "outcome": outcome}


Handler = Callable[[Report, Book, float, Log], list[Outcome]]

_HANDLERS: dict[str, Handler] = {
    "message.bounced": _bounced,
    "message.complained": _complained,
    "message.delivered": _delivered,
    "message.sent": _sent,
    "message.rejected": _rejected,
}

EVENT_TYPES = tuple(_HANDLERS)


def handle(event: Event, book: Book, now: float, log: Log) -> list[Outcome]:
    """Apply one event to the book; what became of each address it names."""
    handler = _HANDLERS.get(event.event_type)
    if handler is None:
        return []
    outcomes = handler(Report.of(event), book, now, log)
    for outcome in outcomes:
        if outcome["outcome"] in ("suppressed", "suppression lifted"):
            log.info("%s: %s", outcome["address"], outcome["outcome"])
    book.sweep(now)
    return outcomes
