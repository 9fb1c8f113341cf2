"""The send guard: one gate that every outgoing email passes.

Two automatic responders answering each other forever is the classic failure of mail
agents. RFC 3834 (automatic responses) and RFC 5230 (Sieve vacation) say when not to
answer; the runner applies those rules to every reply, caps replies per thread and per
sender, and then asks every plugin's ``veto_send`` hook (the bounce tracker vetoes
suppressed addresses).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from runner.actions import Action, Reply
from runner.events import Address, Event, parse_addresses

if TYPE_CHECKING:
    from runner.config import GuardSettings

__all__ = ["AUTO_REPLY_HEADERS", "SendGuard", "auto_reply_refusal", "normalise_address"]

# What our own automatic replies carry, so that other responders leave them alone.
AUTO_REPLY_HEADERS = {"Auto-Submitted": "auto-replied"}

_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
_LIST_HEADERS = ("List-Id", "List-Unsubscribe", "List-Post", "List-Help")


def normalise_address(address: str) -> str:
    """The comparison form of an address: lower-cased, without a display name."""
    found = parse_addresses(address)
    email = found[0].email if found else address
    return email.strip().lower()


def auto_reply_refusal(event: Event, no_reply_patterns: Iterable[str]) -> str | None:
    """Why RFC 3834 says not to answer this message automatically, or None."""
    if event.event_type == "message.sent":
        return "message.sent is our own outgoing mail"
    message = event.message
    if message is None:
        return f"{event.event_type or 'this event'} carries no message to answer"
    headers = message.headers
    auto_submitted = headers.get("Auto-Submitted", "").strip().lower()
    if auto_submitted and auto_submitted.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto_submitted} (RFC 3834)"
    precedence = headers.get("Precedence", "").strip().lower()
    if precedence in _BULK_PRECEDENCE:
        return f"Precedence: {precedence}"
    for name in _LIST_HEADERS:
        if name in headers:
            return f"mailing-list mail ({name})"
    suppress = headers.get("X-Auto-Response-Suppress", "").lower()
    if "all" in suppress or "autoreply" in suppress:
        return f"X-Auto-Response-Suppress: {suppress}"
    sender = message.sender
    if sender is None or not sender.email or sender.email == "<>":
        return "no sender (null return path)"
    if _is_no_reply(sender, no_reply_patterns):
        return f"{sender.email} does not take replies"
    if message.inbox_id and sender.email.lower() == message.inbox_id.lower():
        return "the sender is this inbox itself"
    return None


def _is_no_reply(sender: Address, patterns: Iterable[str]) -> bool:
    local = sender.local_part.lower().split("+", 1)[0]
    return any(local == p or local.startswith(p + "-") for p in patterns)


class SendGuard:
    """Decides whether an email action may leave; the answer is a reason or None."""

    def __init__(
        self,
        settings: GuardSettings,
        *,
        count_replies: Callable[..., int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._count_replies = count_replies
        self._clock = clock

    def check(
        self, event: Event, action: Action, recipients: Iterable[str]
    ) -> str | None:
        """The rules, then the caps."""
        recipients = tuple(recipients)
        refusal = self.rules(event, action, recipients)
        if refusal is None and isinstance(action, Reply):
            refusal = self.over_cap(event, recipients)
        return refusal

    def rules(
        self, event: Event, action: Action, recipients: Iterable[str]
    ) -> str | None:
        """Why RFC 3834 and the settings forbid this email, caps aside, or None."""
        if not action.sends_email:
            return None
        if event.event_type == "message.sent":
            return "message.sent is our own outgoing mail: never answered"
        if not isinstance(action, Reply):
            return None
        refusal = auto_reply_refusal(event, self.settings.no_reply_patterns)
        if refusal:
            return refusal
        return self._unanswerable(event, recipients)

    def _unanswerable(self, event: Event, recipients: Iterable[str]) -> str | None:
        """The sender may be fine while the reply goes elsewhere (Reply-To)."""
        inbox = event.inbox_id.lower()
        for recipient in recipients:
            for address in parse_addresses(recipient):
                if _is_no_reply(address, self.settings.no_reply_patterns):
                    return f"{address.email} does not take replies"
                if inbox and address.email.lower() == inbox:
                    return f"the reply would go to this inbox itself ({address.email})"
        return None

    def over_cap(
        self,
        event: Event,
        recipients: Iterable[str],
        count_replies: Callable[..., int] | None = None,
    ) -> str | None:
        """Whether one more reply would go over a cap; ``count_replies`` counts the
        replies already sent (the store's, by default)."""
        count = count_replies or self._count_replies
        now = self._clock()
        s = self.settings
        if event.thread_id:
            sent = count(
                since=now - s.thread_window_hours * 3600, thread_id=event.thread_id
            )
            if sent >= s.max_replies_per_thread:
                return (
                    f"{sent} automatic replies in this thread in the last "
                    f"{s.thread_window_hours:g} h (cap {s.max_replies_per_thread})"
                )
        for recipient in recipients:
            sent = count(
                since=now - s.sender_window_hours * 3600,
                recipient=normalise_address(recipient),
            )
            if sent >= s.max_replies_per_sender:
                return (
                    f"{sent} automatic replies to {recipient} in the last "
                    f"{s.sender_window_hours:g} h (cap {s.max_replies_per_sender})"
                )
        return None
