"""What the bounce tracker remembers, in the plugin's own key-value state.

Keys:

- ``suppressed:<key>``: an address no plugin may send to, and why.
- ``soft:<key>``: transient bounces counted for an address (at most one a UTC day) and
  the last bounce that did not suppress it; forgotten after the quiet window.
- ``window:<inbox>:<hour>``: what an inbox sent and what came back, per hour; hours
  older than the reputation window are pruned.
- ``paused:<inbox>``: an inbox whose sends the reputation guard paused.
- ``housekeeping:at``: when stale records were last swept (at most hourly).

Every record is read, changed and written back, so two workers that handle events
about the same address or inbox at the same instant can lose one count: the counts and
rates are estimates, and a suppression, once written, is never lost that way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner import PluginState

from .addresses import display_address, suppression_key
from .settings import BounceTrackerConfig, ReputationGuard

__all__ = [
    "COMPLAINT",
    "MANUAL",
    "PERMANENT_BOUNCE",
    "TRANSIENT_BOUNCES",
    "Book",
    "Suppression",
    "Volume",
    "format_time",
    "resume_command",
]

SUPPRESSED = "suppressed:"
SOFT = "soft:"
WINDOW = "window:"
PAUSED = "paused:"
HOUSEKEEPING = "housekeeping:at"

HOUR = 3600
DAY = 86400

# Where a suppression came from, weakest first: a stronger one replaces a weaker one.
TRANSIENT_BOUNCES = "transient_bounces"
MANUAL = "manual"
PERMANENT_BOUNCE = "permanent_bounce"
COMPLAINT = "complaint"
_STRENGTH = {TRANSIENT_BOUNCES: 0, MANUAL: 1, PERMANENT_BOUNCE: 2, COMPLAINT: 3}

COUNTERS = ("sent", "delivered", "bounced", "soft_bounced", "complained", "rejected")


def format_time(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def resume_command(inbox: str) -> str:
    return f"agentmail-runner suppressions resume {inbox}"


def _utc_day(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date().isoformat()


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _hour_of(key: str) -> int | None:
    suffix = key.rpartition(":")[2]
    return int(suffix) if suffix.isdigit() else None


@dataclass(frozen=True)
class Suppression:
    """An address that no plugin may send to."""

    key: str
    address: str
    source: str
    reason: str
    type: str = ""
    sub_type: str = ""
    since: float = 0.0
    inbox_id: str = ""
    event_id: str = ""

    @classmethod
    def from_state(cls, key: str, raw: Any) -> Suppression:
        data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}

        def text(name: str) -> str:
            return str(data.get(name) or "")

        return cls(
            key=key,
            address=text("address") or key,
            source=text("source") or MANUAL,
            reason=text("reason"),
            type=text("type"),
            sub_type=text("sub_type"),
            since=_number(data.get("since")),
            inbox_id=text("inbox_id"),
            event_id=text("event_id"),
        )

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        reason = self.reason or self.source
        return f"{self.address} is suppressed since {format_time(self.since)}: {reason}"


@dataclass(frozen=True)
class Volume:
    """An inbox's counts over the reputation window."""

    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    soft_bounced: int = 0
    complained: int = 0
    rejected: int = 0

    @property
    def messages(self) -> int:
        """Recipients mailed: as announced by message.sent, or as their outcomes
        show, whichever is larger (the webhook may not subscribe to message.sent)."""
        return max(self.sent, self.delivered + self.bounced + self.soft_bounced)

    def rate(self, count: int) -> float:
        return count / self.messages if self.messages else 0.0

    def breach(self, guard: ReputationGuard) -> str | None:
        """Which rate is over its threshold, described, or None."""
        if self.messages < guard.min_volume:
            return None
        for measure, count, threshold in (
            ("bounce", self.bounced, guard.max_bounce_rate),
            ("complaint", self.complained, guard.max_complaint_rate),
        ):
            rate = self.rate(count)
            if rate > threshold:
                return (
                    f"{measure} rate {rate:.2%} ({count} of {self.messages} messages "
                    f"in the last {guard.window_hours} h) is above the threshold "
                    f"of {threshold:.2%}"
                )
        return None


class Book:
    """Reads and writes the tracker's records; ``now`` comes from the caller."""

    def __init__(self, state: PluginState, config: BounceTrackerConfig) -> None:
        self.state = state
        self.config = config

    # -- suppressions ----------------------------------------------------------

    def suppression(self, key: str) -> Suppression | None:
        raw = self.state.get(SUPPRESSED + key)
        return None if raw is None else Suppression.from_state(key, raw)

    def suppressions(self) -> list[Suppression]:
        return [
            Suppression.from_state(key.removeprefix(SUPPRESSED), raw)
            for key, raw in self.state.items(SUPPRESSED)
        ]

    def suppress(self, suppression: Suppression) -> bool:
        """Record a suppression unless an equal or stronger one is already there."""
        current = self.suppression(suppression.key)
        if current is not None and _STRENGTH.get(current.source, 1) >= _STRENGTH.get(
            suppression.source, 1
        ):
            return False
        self.state.set(SUPPRESSED + suppression.key, suppression.to_state())
        self.state.delete(SOFT + suppression.key)
        return True

    def lift(self, key: str) -> Suppression | None:
        current = self.suppression(key)
        if current is not None:
            self.state.delete(SUPPRESSED + key)
        self.state.delete(SOFT + key)
        return current

    # -- transient bounces -----------------------------------------------------

    def note_bounce(
        self,
        address: str,
        *,
        bounce_type: str,
        sub_type: str,
        counts: bool,
        now: float,
        inbox_id: str,
        event_id: str,
    ) -> str:
        """Record a bounce that does not suppress at once; the outcome, in words."""
        key = suppression_key(address)
        if self.suppression(key) is not None:
            return "already suppressed"
        record = self._soft_record(key, now)
        record["address"] = display_address(address)
        record["updated_at"] = now
        record["last_bounce"] = {
            "type": bounce_type,
            "sub_type": sub_type,
            "at": now,
            "inbox_id": inbox_id,
            "event_id": event_id,
        }
        outcome = "recorded, not counted"
        if counts:
            outcome = self._count(record, now)
        limit = self.config.soft_bounce_limit
        if record["count"] >= limit:
            self.suppress(
                Suppression(
                    key=key,
                    address=record["address"],
                    source=TRANSIENT_BOUNCES,
                    reason=f"{record['count']} transient bounces on separate days "
                    f"(last: {sub_type or bounce_type or 'no sub-type'})",
                    type=bounce_type,
                    sub_type=sub_type,
                    since=now,
                    inbox_id=inbox_id,
                    event_id=event_id,
                )
            )
            return "suppressed"
        self.state.set(SOFT + key, record)
        return outcome

    def _soft_record(self, key: str, now: float) -> dict[str, Any]:
        raw = self.state.get(SOFT + key)
        record: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
        quiet = self.config.soft_bounce_quiet_days * DAY
        if now - _number(record.get("last_counted_at")) > quiet:
            record.update(count=0, last_counted_day=None, last_counted_at=None)
        record["count"] = int(_number(record.get("count")))
        return record

    def _count(self, record: dict[str, Any], now: float) -> str:
        day = _utc_day(now)
        limit = self.config.soft_bounce_limit
        if record.get("last_counted_day") == day:
            return f"already counted today ({record['count']} of {limit})"
        record["count"] += 1
        record["last_counted_day"] = day
        record["last_counted_at"] = now
        return f"counted ({record['count']} of {limit})"

    def note_delivery(self, address: str) -> str:
        """A delivery shows the mailbox takes mail: the soft count starts again, and a
        suppression that transient bounces caused is lifted."""
        key = suppression_key(address)
        current = self.suppression(key)
        if current is not None and current.source == TRANSIENT_BOUNCES:
            self.lift(key)
            return "suppression lifted"
        if self.state.delete(SOFT + key):
            return "soft count reset"
        return "suppressed" if current is not None else "delivered"

    # -- inbox reputation ------------------------------------------------------

    def add_to_window(self, inbox: str, counter: str, amount: int, now: float) -> None:
        if not inbox or amount <= 0:
            return
        key = f"{WINDOW}{inbox.lower()}:{int(now // HOUR)}"
        raw = self.state.get(key)
        bucket: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
        bucket[counter] = int(_number(bucket.get(counter))) + amount
        self.state.set(key, bucket)

    def window(self, inbox: str, now: float) -> Volume:
        """The inbox's counts over the window; its older hours are pruned."""
        oldest = int(now // HOUR) - self.config.reputation.window_hours + 1
        totals = dict.fromkeys(COUNTERS, 0)
        for key, bucket in self.state.items(f"{WINDOW}{inbox.lower()}:"):
            hour = _hour_of(key)
            if hour is None or hour < oldest:
                self.state.delete(key)
                continue
            if isinstance(bucket, Mapping):
                for counter in COUNTERS:
                    totals[counter] += int(_number(bucket.get(counter)))
        return Volume(**totals)

    def inboxes(self) -> list[str]:
        """Every inbox with counts in the window or a pause."""
        counted = {
            key.removeprefix(WINDOW).rpartition(":")[0]
            for key, _ in self.state.items(WINDOW)
        }
        return sorted(counted | {inbox for inbox, _ in self.pauses()})

    def pause(self, inbox: str) -> dict[str, Any] | None:
        raw = self.state.get(PAUSED + inbox.lower())
        return dict(raw) if isinstance(raw, Mapping) else None

    def pauses(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (key.removeprefix(PAUSED), dict(raw) if isinstance(raw, Mapping) else {})
            for key, raw in self.state.items(PAUSED)
        ]

    def check_reputation(self, inbox: str, now: float) -> str | None:
        """Pause the inbox if a rate is over its threshold; the reason when it was
        paused by this call (None if it was already paused or is within bounds)."""
        guard = self.config.reputation
        if not guard.enabled or not inbox or self.pause(inbox) is not None:
            return None
        reason = self.window(inbox, now).breach(guard)
        if reason is None:
            return None
        self.state.set(
            PAUSED + inbox.lower(), {"inbox_id": inbox, "since": now, "reason": reason}
        )
        return reason

    def resume(self, inbox: str) -> dict[str, Any] | None:
        """Lift a pause and start the inbox's window afresh, so that the bounces that
        caused the pause do not cause it again at once."""
        paused = self.pause(inbox)
        if paused is None:
            return None
        for key, _ in self.state.items(f"{WINDOW}{inbox.lower()}:"):
            self.state.delete(key)
        self.state.delete(PAUSED + inbox.lower())
        return paused

    # -- housekeeping ----------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Forget soft counts past the quiet window and hours past the reputation
        window, for every address and inbox; at most once an hour."""
        last = self.state.get(HOUSEKEEPING)
        if isinstance(last, int | float) and 0 <= now - last < HOUR:
            return
        self.state.set(HOUSEKEEPING, now)
        quiet = self.config.soft_bounce_quiet_days * DAY
        for key, record in self.state.items(SOFT):
            updated = record.get("updated_at") if isinstance(record, Mapping) else None
            if now - _number(updated) > quiet:
                self.state.delete(key)
        oldest = int(now // HOUR) - self.config.reputation.window_hours + 1
        for key, _ in self.state.items(WINDOW):
            hour = _hour_of(key)
            if hour is None or hour < oldest:
                self.state.delete(key)
