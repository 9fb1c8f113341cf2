"""Operator commands: retry and replay events, dead letters, AgentMail webhooks, the
WebSocket ingress and the plugin scaffold.

``events retry`` and ``events replay`` differ in what they repeat:

* retry queues a failed or dead event again and keeps its ledger: only the plugin
  calls and actions that did not succeed run again, under the same idempotency keys,
  so nothing that was sent is sent twice;
* replay stores a finished event again as a new event: every plugin runs from
  scratch and every action is a new request under new idempotency keys, so replies
  and forwards are sent again. It is a deliberate second processing and asks for
  confirmation (``--yes``).
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from agentmail import AgentMail

    from runner.config import Config
    from runner.store import EventRow, Store

__all__ = ["LIMIT", "add_commands", "hide_url_password", "require_store"]

_T = TypeVar("_T")

# Bulk operations from this many events on show a progress bar.
PROGRESS_FROM = 2

# How many events a listing may ask for: the engines refuse a negative or a huge
# LIMIT (SQLite takes a negative one as none at all), and 0 would list nothing.
LIMIT = click.IntRange(1, 10_000)


def add_commands(cli: click.Group, events: click.Group) -> None:
    """Attach the operator commands to the ``agentmail-runner`` group."""
    events.add_command(events_retry)
    events.add_command(events_replay)
    cli.add_command(dlq)
    cli.add_command(webhooks)
    cli.add_command(listen_command)
    cli.add_command(new_plugin)


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def require_store(database: str) -> None:
    """Fail, creating nothing, when the SQLite store a command works on is missing."""
    from runner.store import missing_file

    path = missing_file(database)
    if path is not None:
        _fail(
            f"no event store at {path}: nothing has been received with this "
            "configuration yet. `agentmail-runner serve` creates it; or point "
            "--config or AGENTMAIL_RUNNER_DATABASE at the store you mean",
            code=1,
        )


def hide_url_password(value: str | None) -> str | None:
    """A URL with its password shown as ``***`` (a database URL in `config show`)."""
    if not value or "://" not in value:
        return value
    parts = urllib.parse.urlsplit(value)
    if parts.password is None:
        return value
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# -- the store and the selection of events -------------------------------------


@contextmanager
def _opened_store(state: Any) -> Iterator[Store]:
    from runner.store import Store, StoreUnavailable

    require_store(state.config.runner.database)
    try:
        store = Store(state.config.runner.database)
    except StoreUnavailable as exc:
        _fail(f"cannot open the store: {exc}")
    try:
        yield store
    except StoreUnavailable as exc:
        _fail(f"the store failed: {exc}")
    finally:
        store.close()


class Picked(NamedTuple):
    """An event chosen by a command, and its status when it was chosen."""

    pk: int
    status: str


def _named(store: Store, refs: Sequence[str]) -> list[Picked]:
    picked = []
    for ref in refs:
        row = store.get_event(ref)
        if row is None:
            _fail(f"no event {ref}: name it by #number, event id or delivery id", 1)
        picked.append(Picked(row.pk, row.status))
    return picked


def _selection(
    store: Store,
    refs: Sequence[str],
    every: bool,
    status: str | None,
    event_type: str | None,
) -> list[Picked]:
    if refs and every:
        _fail("name events or pass --all, not both")
    if refs:
        return _named(store, refs)
    if not every:
        _fail(
            "name the events (#number or event id), or pass --all with --status/--type"
        )
    found = store.select_events(status=status, event_type=event_type)
    return [Picked(pk, event_status) for pk, event_status in found]


@contextmanager
def _progress(items: Sequence[_T], label: str) -> Iterator[Iterable[_T]]:
    """The items, with a progress bar on stderr when there are several."""
    if len(items) < PROGRESS_FROM:
        yield items
        return
    with click.progressbar(items, label=label, file=sys.stderr) as bar:
        yield bar


def _numbers(rows: Iterable[Any]) -> str:
    return ", ".join(f"#{pk}" for pk in rows)


def _processable(
    store: Store, picked: Sequence[Picked], *, explicit: bool, doing: str
) -> list[Picked]:
    """The events a plugin can process; named events that none can stop the command
    before anything is done, and selected ones are skipped, saying so."""
    from runner.events import printable
    from runner.store import DEAD
    from runner.story import why_unusable

    usable, unusable = [], []
    for event in picked:
        row = store.get_event(event.pk)
        reason = why_unusable(row) if row is not None else None
        if reason is None:
            usable.append(event)
            continue
        unusable.append(event.pk)
        if explicit:
            drop = f"; `agentmail-runner dlq drop #{event.pk}` deletes it"
            click.echo(
                f"error: event #{event.pk} cannot be {doing}: no plugin can process "
                f"it ({printable(reason)})" + (drop if event.status == DEAD else ""),
                err=True,
            )
    if unusable and explicit:
        sys.exit(1)
    if unusable:
        click.echo(
            f"skipped {len(unusable)} event(s) that no plugin can process: "
            f"{_numbers(unusable)}"
        )
    return usable


# -- events retry / replay -----------------------------------------------------

_SELECT_HELP = "Every event that --status and --type select (without them: all)."


def _why_not_retried(status: str) -> str:
    if status == "done":
        return "it is done and nothing failed (`events replay` processes it again)"
    if status == "running":
        return "a worker holds it now"
    return "it is waiting for its first attempt"


def _retry(picked: Sequence[Picked], store: Store, *, explicit: bool) -> None:
    retried, skipped = [], []
    with _progress(picked, "retrying") as selected:
        for event in selected:
            if store.retry_event(event.pk):
                retried.append(event.pk)
            else:
                skipped.append(event)
    click.echo(f"queued {len(retried)} event(s) again: {_numbers(retried) or '-'}")
    if not skipped:
        return
    if explicit:
        for event in skipped:
            reason = _why_not_retried(event.status)
            click.echo(f"event #{event.pk} not retried: {reason}", err=True)
        sys.exit(1)
    click.echo(f"skipped {len(skipped)} event(s) that were neither failed nor dead")


@click.command("retry")
@click.argument("refs", nargs=-1)
@click.option("--all", "every", is_flag=True, help=_SELECT_HELP)
@click.option(
    "--status",
    type=click.Choice(["dead", "pending"]),
    default=None,
    help="With --all: dead letters, or events waiting for their next attempt.",
)
@click.option("--type", "event_type", default=None, help="With --all: an event type.")
@click.pass_obj
def events_retry(
    state: Any,
    refs: tuple[str, ...],
    every: bool,
    status: str | None,
    event_type: str | None,
) -> None:
    """Queue failed or dead events again; only what did not succeed runs again.

    The ledger is kept: plugin calls that succeeded are not repeated and actions
    already done are not sent twice (the same idempotency keys are used). Calls and
    actions that failed, for good or not, get another try, and so do actions that a
    dry run only recorded. A running `serve` or `worker` takes the events at once.
    """
    with _opened_store(state) as store:
        picked = _selection(store, refs, every, status, event_type)
        picked = _processable(store, picked, explicit=bool(refs), doing="retried")
        _retry(picked, store, explicit=bool(refs))


def replay_prefix() -> str:
    """What makes a replay's event key new: ``replay-<random>:`` + the original's."""
    return f"replay-{uuid.uuid4().hex[:16]}"


@click.command("replay")
@click.argument("refs", nargs=-1)
@click.option("--all", "every", is_flag=True, help=_SELECT_HELP)
@click.option(
    "--status",
    type=click.Choice(["done", "dead"]),
    default=None,
    help="With --all: finished events, or dead letters.",
)
@click.option("--type", "event_type", default=None, help="With --all: an event type.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def events_replay(
    state: Any,
    refs: tuple[str, ...],
    every: bool,
    status: str | None,
    event_type: str | None,
    yes: bool,
) -> None:
    """Process finished events again from scratch, as new events.

    Every subscribed plugin runs again and every action is a new request under new
    idempotency keys: replies, sends and forwards ARE SENT AGAIN (the send guard's
    caps still apply). The original events, their ledgers and their dedup keys stay
    as they are. To finish only what failed, use `events retry`.
    """
    with _opened_store(state) as store:
        picked = _selection(store, refs, every, status, event_type)
        finished = [e for e in picked if e.status in ("done", "dead")]
        unfinished = [e for e in picked if e.status not in ("done", "dead")]
        if refs and unfinished:
            for event in unfinished:
                click.echo(
                    f"event #{event.pk} is {event.status}, not finished: wait for it, "
                    "or use `events retry`",
                    err=True,
                )
            sys.exit(1)
        finished = _processable(store, finished, explicit=bool(refs), doing="replayed")
        if not finished:
            click.echo("no finished event selected; nothing replayed")
            return
        if not yes:
            click.confirm(
                f"Replay {len(finished)} event(s)? Every plugin runs again and its "
                "emails are sent again.",
                abort=True,
            )
        replayed = []
        with _progress(finished, "replaying") as selected:
            for event in selected:
                pk = store.replay_event(event.pk, replay_prefix())
                if pk is not None:
                    replayed.append(pk)
    click.echo(
        f"replayed {len(replayed)} event(s) as new events: {_numbers(replayed) or '-'}"
    )
    if unfinished:
        click.echo(f"skipped {len(unfinished)} unfinished event(s)")


# -- dlq -----------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Dead letters: events that failed for good or ran out of attempts."""


@dlq.command("list")
@click.option("--type", "event_type", default=None, help="An event type.")
@click.option("--limit", type=LIMIT, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def dlq_list(state: Any, event_type: str | None, limit: int, as_json: bool) -> None:
    """The most recent dead letters first, with the reason each one died."""
    from runner.events import printable
    from runner.story import format_time

    with _opened_store(state) as store:
        rows = store.list_events(limit=limit, status="dead", event_type=event_type)
    if as_json:
        click.echo(json.dumps([_dead_letter(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no dead letters")
    for r in rows:
        click.echo(
            printable(
                f"#{r.pk:<6} {format_time(r.finished_at)}  {r.event_type or '-':<22} "
                f"{r.event_key}"
            )
        )
        click.echo(printable(f"        {r.last_error or '(no reason recorded)'}"))


def _dead_letter(row: EventRow) -> dict[str, Any]:
    return {
        "id": row.pk,
        "event_key": row.event_key,
        "event_type": row.event_type,
        "attempts": row.attempts,
        "received_at": row.received_at,
        "died_at": row.finished_at,
        "reason": row.last_error,
    }


def _dead_only(picked: Sequence[Picked], explicit: bool) -> list[Picked]:
    alive = [e for e in picked if e.status != "dead"]
    if explicit and alive:
        for event in alive:
            click.echo(
                f"event #{event.pk} is not a dead letter ({event.status})", err=True
            )
        sys.exit(1)
    return [e for e in picked if e.status == "dead"]


@dlq.command("retry")
@click.argument("refs", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every dead letter (of --type).")
@click.option("--type", "event_type", default=None, help="With --all: an event type.")
@click.pass_obj
def dlq_retry(
    state: Any, refs: tuple[str, ...], every: bool, event_type: str | None
) -> None:
    """Queue dead letters again; only what did not succeed runs again."""
    with _opened_store(state) as store:
        picked = _selection(store, refs, every, "dead", event_type)
        dead = _dead_only(picked, bool(refs))
        dead = _processable(store, dead, explicit=bool(refs), doing="retried")
        _retry(dead, store, explicit=bool(refs))


@dlq.command("drop")
@click.argument("refs", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every dead letter (of --type).")
@click.option("--type", "event_type", default=None, help="With --all: an event type.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def dlq_drop(
    state: Any, refs: tuple[str, ...], every: bool, event_type: str | None, yes: bool
) -> None:
    """Delete dead letters, with their ledgers and actions.

    Their event ids are forgotten too: if AgentMail delivers one of them again, it is
    processed as a new event.
    """
    with _opened_store(state) as store:
        picked = _selection(store, refs, every, "dead", event_type)
        doomed = _dead_only(picked, bool(refs))
        if not doomed:
            click.echo("no dead letters selected; nothing dropped")
            return
        if not yes:
            click.confirm(f"Delete {len(doomed)} dead letter(s) for good?", abort=True)
        dropped = []
        with _progress(doomed, "dropping") as selected:
            for event in selected:
                if store.drop_dead_letter(event.pk):
                    dropped.append(event.pk)
    click.echo(f"dropped {len(dropped)} dead letter(s): {_numbers(dropped) or '-'}")


# -- webhooks ------------------------------------------------------------------


@contextmanager
def _agentmail(config: Config, what: str) -> Iterator[AgentMail]:
    import httpx

    from runner.runtime import make_client

    with httpx.Client(timeout=config.runner.api_timeout_seconds) as http:
        client = make_client(config, http)
        if client is None:
            _fail(
                f"{what} needs an AgentMail API key: set AGENTMAIL_API_KEY (or "
                "api_key in [runner])"
            )
        yield client


def _plugin_event_types(config: Config) -> list[str]:
    """The AgentMail event types that the enabled plugins subscribe to."""
    from runner.config import ConfigError
    from runner.loader import load
    from runner.subscriptions import expand_subscriptions

    try:
        loaded = load(config, strict=False)
    except ConfigError as exc:
        _fail(str(exc))
    return expand_subscriptions(loaded.subscribed_types())


def _webhook_row(webhook: Any) -> dict[str, Any]:
    return {
        "webhook_id": webhook.webhook_id,
        # A URL may carry a password for the proxy in front (user:pw@host).
        "url": hide_url_password(webhook.url),
        "enabled": webhook.enabled,
        "event_types": list(webhook.event_types or []),
        "inbox_ids": list(webhook.inbox_ids or []),
        "client_id": webhook.client_id,
    }


def _echo_webhook(row: dict[str, Any]) -> None:
    from runner.events import printable

    state = "enabled" if row["enabled"] else "DISABLED"
    lines = [
        f"{row['webhook_id']}  {row['url']}  [{state}]",
        f"  event types: {', '.join(row['event_types']) or '-'}",
    ]
    if row["inbox_ids"]:
        lines.append(f"  inboxes:     {', '.join(row['inbox_ids'])}")
    for line in lines:
        click.echo(printable(line))


@click.group()
def webhooks() -> None:
    """The runner's webhook at AgentMail: register, list, delete."""


@webhooks.command("register")
@click.argument("url")
@click.option(
    "--event-type",
    "event_types",
    multiple=True,
    help="Repeatable. Default: what the enabled plugins subscribe to.",
)
@click.option(
    "--inbox",
    "inbox_ids",
    multiple=True,
    help="Repeatable. Only these inboxes (default: every inbox of the key).",
)
@click.option("--show-secret", is_flag=True, help="Print the webhook's signing secret.")
@click.pass_obj
def webhooks_register(
    state: Any,
    url: str,
    event_types: tuple[str, ...],
    inbox_ids: tuple[str, ...],
    show_secret: bool,
) -> None:
    """Make AgentMail deliver events to URL (an https:// URL of this runner).

    Running it again is harmless: the webhook is found by a client id derived from
    the URL, and its event types are brought up to date.
    """
    from runner.subscriptions import expand_subscriptions
    from runner.webhooks import WebhookError, check_webhook_url, register_webhook

    config = state.config
    try:
        check_webhook_url(url)
    except WebhookError as exc:
        _fail(str(exc))
    types = expand_subscriptions(event_types) or _plugin_event_types(config)
    with _agentmail(config, "webhooks register") as client:
        try:
            registration = register_webhook(
                client, url, event_types=types, inbox_ids=inbox_ids
            )
        except WebhookError as exc:
            _fail(str(exc), 1)
    webhook = registration.webhook
    click.echo(f"{registration.outcome}: {webhook.webhook_id}")
    _echo_webhook(_webhook_row(webhook))
    if show_secret:
        click.echo(f"  signing secret: {webhook.secret}")
    else:
        click.echo(
            "  signing secret: not shown (--show-secret prints it); the runner "
            "needs it in AGENTMAIL_WEBHOOK_SECRET"
        )


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhooks_list(state: Any, as_json: bool) -> None:
    """The account's webhooks (signing secrets are never shown)."""
    from runner.webhooks import WebhookError, list_webhooks

    with _agentmail(state.config, "webhooks list") as client:
        try:
            rows = [_webhook_row(w) for w in list_webhooks(client)]
        except WebhookError as exc:
            _fail(str(exc), 1)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no webhooks")
    for row in rows:
        _echo_webhook(row)


@webhooks.command("delete")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def webhooks_delete(state: Any, ref: str, yes: bool) -> None:
    """Delete a webhook, named by its id or by the URL it delivers to."""
    from runner.webhooks import WebhookError, delete_webhook, find_webhooks

    with _agentmail(state.config, "webhooks delete") as client:
        try:
            found = find_webhooks(client, ref)
            if not found:
                _fail(f"no webhook {ref} (`webhooks list` shows them)", 1)
            if not yes:
                names = ", ".join(f"{w.webhook_id} ({w.url})" for w in found)
                click.confirm(f"Delete {names}?", abort=True)
            for webhook in found:
                delete_webhook(client, webhook.webhook_id)
                click.echo(f"deleted {webhook.webhook_id} ({webhook.url})")
        except WebhookError as exc:
            _fail(str(exc), 1)


# -- listen --------------------------------------------------------------------


def _websocket_client(config: Config, url: str, http: Any) -> AgentMail:
    """An SDK client whose WebSocket host is ``url``."""
    from agentmail import AgentMail, AgentMailEnvironment

    from runner.webhooks import is_loopback

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        _fail(f"--websocket-url {url}: write wss://HOST (ws:// only for loopback)")
    if parts.scheme == "ws" and not is_loopback(parts.hostname):
        _fail(
            f"--websocket-url {url}: the API key would travel unencrypted; use wss://"
        )
    base = config.runner.api_base_url or AgentMailEnvironment.PROD.http
    environment = AgentMailEnvironment(
        http=base.rstrip("/"), websockets=url.rstrip("/")
    )
    return AgentMail(api_key=config.api_key, environment=environment, httpx_client=http)


def _runtime(config: Config, dry_run: bool) -> Any:
    from runner.config import ConfigError
    from runner.loader import PluginLoadError
    from runner.runtime import Runtime
    from runner.store import StoreUnavailable

    try:
        return Runtime(config, dry_run=dry_run or None, require_secrets=False)
    except (ConfigError, PluginLoadError) as exc:
        _fail(str(exc))
    except StoreUnavailable as exc:
        _fail(f"cannot open the store: {exc}")


@click.command("listen")
@click.option(
    "--event-type",
    "event_types",
    multiple=True,
    help="Repeatable. Default: what the enabled plugins subscribe to.",
)
@click.option(
    "--inbox", "inbox_ids", multiple=True, help="Repeatable. Default: every inbox."
)
@click.option(
    "--websocket-url",
    envvar="AGENTMAIL_WEBSOCKET_URL",
    default=None,
    help="Another WebSocket host (default: AgentMail's, or AGENTMAIL_BASE_URL's).",
)
@click.option("--workers", type=int, default=None, help="Worker threads.")
@click.option(
    "--dry-run", is_flag=True, help="Record actions instead of executing them."
)
@click.pass_obj
def listen_command(
    state: Any,
    event_types: tuple[str, ...],
    inbox_ids: tuple[str, ...],
    websocket_url: str | None,
    workers: int | None,
    dry_run: bool,
) -> None:
    """Take events from AgentMail's WebSocket instead of webhooks (development).

    No public URL is needed. Events go to the same store and through the same dedup
    as webhooks, and workers in this process handle them. Events sent while the
    socket is down are not sent again: use webhooks in production.
    """
    import httpx

    from runner.listen import ListenError, listen
    from runner.subscriptions import expand_subscriptions

    config = state.config
    if not config.api_key:
        _fail("listen needs AGENTMAIL_API_KEY: the WebSocket is opened with it")
    rt = _runtime(config, dry_run)
    try:
        patterns = event_types or rt.plugins.subscribed_types()
        types = expand_subscriptions(patterns)
        if not types:
            _fail(
                "no enabled plugin subscribes to any event type: enable one in "
                "plugins.toml, or pass --event-type"
            )
        if rt.dry_run:
            click.echo("DRY-RUN: actions are recorded, nothing is sent", err=True)
        with httpx.Client(timeout=config.runner.api_timeout_seconds) as http:
            client = (
                _websocket_client(config, websocket_url, http)
                if websocket_url
                else rt.client
            )
            code = listen(
                rt, client, event_types=types, inbox_ids=inbox_ids, workers=workers
            )
    except ListenError as exc:
        _fail(str(exc), 1)
    finally:
        rt.close()
    sys.exit(code)


# -- new-plugin ----------------------------------------------------------------


@click.command("new-plugin")
@click.argument("name")
@click.option(
    "--directory",
    "-d",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the package (default: ./agentmail-runner-NAME).",
)
def new_plugin(name: str, directory: Path | None) -> None:
    """Write a ready plugin package: entry point, one hook, settings, README, tests."""
    from runner.scaffold import ScaffoldError, write_plugin

    try:
        made = write_plugin(name, directory)
    except ScaffoldError as exc:
        _fail(str(exc))
    click.echo(f"wrote {made.distribution} in {made.directory}:")
    for path in made.files:
        click.echo(f"  {path.relative_to(made.directory)}")
    click.echo(
        "\nnext:\n"
        f"  cd {made.directory}\n"
        "  pip install -e '.[test]' && pytest\n"
        f"  then enable it with a [plugins.{made.name}] table in plugins.toml"
    )
