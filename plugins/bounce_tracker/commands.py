"""``agentmail-runner suppressions``: the suppression list and the paused inboxes."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from collections.abc import Callable

import click

from runner import PluginState, parse_addresses, printable

from .addresses import display_address, suppression_key
from .book import MANUAL, Book, Suppression, Volume, format_time, resume_command
from .settings import BounceTrackerConfig

__all__ = ["EXPORT_COLUMNS", "suppressions_group"]

EXPORT_COLUMNS = (
    "address",
    "key",
    "reason",
    "type",
    "sub_type",
    "source",
    "since",
    "inbox_id",
    "event_id",
)


def _iso(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _checked_address(address: str) -> str:
    found = parse_addresses(address)
    email = found[0].email if len(found) == 1 else ""
    local, _, domain = email.rpartition("@")
    if not local or not domain:
        raise click.BadParameter(
            f"{address!r} is not one email address; write it as name@example.com",
            param_hint="ADDRESS",
        )
    return email


# What a spreadsheet takes as the start of a formula (OWASP's list).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: reasons and addresses come from remote
    mail servers, and one starting with ``=`` would otherwise run as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _echo(line: str) -> None:
    """Print a line that holds text from mail (addresses, reasons, inbox ids)."""
    click.echo(printable(line))


def _rates_line(inbox: str, volume: Volume) -> str:
    return (
        f"{inbox}: {volume.messages} messages, "
        f"{volume.bounced} permanent bounces ({volume.rate(volume.bounced):.2%}), "
        f"{volume.complained} complaints ({volume.rate(volume.complained):.2%}), "
        f"{volume.soft_bounced} other bounces, {volume.rejected} rejected"
    )


def suppressions_group(
    config: BounceTrackerConfig, open_state: Callable[[], PluginState]
) -> click.Group:
    """The ``suppressions`` command group, on the store that ``open_state`` opens."""

    def book() -> Book:
        return Book(open_state(), config)

    @click.group("suppressions")
    def group() -> None:
        """Addresses no plugin may send to, and inboxes whose sends are paused."""

    @group.command("list")
    def list_suppressions() -> None:
        """Suppressed addresses, oldest first, then the paused inboxes."""
        records = book()
        entries = sorted(records.suppressions(), key=lambda s: s.since)
        if not entries:
            click.echo("no suppressed addresses")
        for entry in entries:
            _echo(
                f"{entry.address}  [{entry.source}]  since {format_time(entry.since)}"
                f"  {entry.reason}"
            )
        for inbox, paused in records.pauses():
            since = format_time(float(paused.get("since") or 0))
            _echo(
                f"inbox {inbox}: automatic sends paused since {since}: "
                f"{paused.get('reason', '')}; resume with `{resume_command(inbox)}`"
            )

    @group.command("add")
    @click.argument("address")
    @click.option("--reason", default="added by an operator", show_default=True)
    def add(address: str, reason: str) -> None:
        """Suppress ADDRESS until it is removed.

        No plugin sends to it, nor to the same mailbox with another +tag or case.
        """
        email = _checked_address(address)
        records = book()
        entry = Suppression(
            key=suppression_key(email),
            address=display_address(email),
            source=MANUAL,
            reason=reason,
            since=time.time(),
        )
        if not records.suppress(entry):
            current = records.suppression(entry.key)
            assert current is not None
            _echo(f"already suppressed: {current.describe()}")
            return
        _echo(f"suppressed {entry.address} (key {entry.key})")

    @group.command("remove")
    @click.argument("address")
    def remove(address: str) -> None:
        """Lift the suppression of ADDRESS.

        Any +tag or letter case finds it: the look-up uses the suppression key.
        """
        key = suppression_key(address)
        lifted = book().lift(key)
        if lifted is None:
            raise click.ClickException(
                f"{address} is not suppressed (looked up as {key}); "
                "`agentmail-runner suppressions list` shows what is"
            )
        _echo(f"removed {lifted.address} ({lifted.source}: {lifted.reason})")

    @group.command("export")
    def export() -> None:
        """The suppression list as CSV on standard output."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for entry in sorted(book().suppressions(), key=lambda s: s.since):
            row = entry.to_state() | {"since": _iso(entry.since)}
            writer.writerow([_cell(row[column]) for column in EXPORT_COLUMNS])
        click.echo(buffer.getvalue(), nl=False)

    @group.command("resume")
    @click.argument("inbox")
    def resume(inbox: str) -> None:
        """Resume automatic sends from a paused INBOX.

        The inbox's counts start again from zero, so that the bounces that caused
        the pause do not cause it again at once.
        """
        paused = book().resume(inbox)
        if paused is None:
            raise click.ClickException(
                f"inbox {inbox} is not paused; `agentmail-runner suppressions list` "
                "shows the paused inboxes"
            )
        since = format_time(float(paused.get("since") or 0))
        _echo(
            f"automatic sends from {inbox} resume (paused since {since}: "
            f"{paused.get('reason', '')}); its counts start again from zero"
        )

    @group.command("rates")
    def rates() -> None:
        """Each inbox's bounce and complaint rates.

        Counted over the reputation window, with the thresholds that pause an inbox.
        """
        guard = config.reputation
        records = book()
        now = time.time()
        click.echo(
            f"last {guard.window_hours} h; pause above {guard.max_bounce_rate:.2%} "
            f"permanent bounces or {guard.max_complaint_rate:.2%} complaints, "
            f"from {guard.min_volume} messages"
            + ("" if guard.enabled else " (the guard is disabled)")
        )
        for inbox in records.inboxes():
            paused = " [PAUSED]" if records.pause(inbox) is not None else ""
            _echo(_rates_line(inbox, records.window(inbox, now)) + paused)

    return group
