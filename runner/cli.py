"""The ``agentmail-runner`` command."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, NoReturn

import click

from runner.config import MAX_PORT, Config, ConfigError, load_config, redact
from runner.operations import LIMIT

__all__ = ["main"]

log = logging.getLogger("agentmail_runner")


class State:
    """What the top-level options give every command."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                _fail(str(exc))
        return self._config


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _setup_logging(level: str, json_lines: bool) -> None:
    logger = logging.getLogger("agentmail_runner")
    logger.setLevel(level.upper())
    if logging.getLogger().handlers or logger.handlers:
        return  # the application (or a test) configured logging already
    handler = logging.StreamHandler()
    if json_lines:
        from runner.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            _TerminalFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    logger.addHandler(handler)


class _TerminalFormatter(logging.Formatter):
    """Log lines with their control characters escaped: the event ids and errors in
    them come from mail. A traceback, added after, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        from runner.events import printable

        return printable(super().formatMessage(record))


class _RunnerGroup(click.Group):
    """The top-level group; it says why a plugin's command is missing."""

    plugin_error: str | None = None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            if self.plugin_error is None or "No such command" not in exc.message:
                raise
            raise click.UsageError(
                f"{exc.message} Plugins could not add their commands, because the "
                f"configuration does not load: {self.plugin_error}",
                ctx,
            ) from exc


@click.group(cls=_RunnerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="AGENTMAIL_RUNNER_CONFIG",
    default=None,
    help="plugins.toml to read (default: ./plugins.toml).",
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of text.")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, log_level: str, log_json: bool
) -> None:
    """Receive AgentMail webhooks and hand each event to plugins."""
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)
    _setup_logging(
        log_level, log_json or os.environ.get("AGENTMAIL_RUNNER_LOG_JSON") == "1"
    )
    ctx.obj = State(config_path)


def _runtime(state: State, **kwargs: Any) -> Any:
    from runner.loader import PluginLoadError
    from runner.runtime import Runtime
    from runner.store import StoreUnavailable

    try:
        return Runtime(state.config, **kwargs)
    except ConfigError as exc:
        _fail(str(exc))
    except PluginLoadError as exc:
        _fail(str(exc))
    except StoreUnavailable as exc:
        _fail(f"cannot open the store: {exc}")


def _listen(value: str | None, config: Config) -> tuple[str, int]:
    if value is None:
        return config.runner.host, config.runner.port
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        _fail(f"--listen {value}: write HOST:PORT, for example 127.0.0.1:3000")
    if int(port) > MAX_PORT:
        _fail(f"--listen {value}: the port must be at most {MAX_PORT}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _announce(rt: Any) -> None:
    if rt.dry_run:
        reason = "dry_run is set" if rt.settings.dry_run else "no AGENTMAIL_API_KEY"
        log.warning("DRY-RUN (%s): actions are recorded, nothing is sent", reason)
        waiting = rt.store.count_by_status().get("pending", 0)
        if waiting:
            log.warning(
                "%d event(s) waiting in this store will be finished in dry-run; "
                "`agentmail-runner events retry ID` sends what they record later",
                waiting,
            )
    if not rt.plugins.plugins:
        where = rt.config.path if rt.config.path and rt.config.path.exists() else None
        log.warning(
            "no plugin is enabled (%s): events are stored and acknowledged, and "
            "nothing acts on them",
            f"none in {where}" if where else "no plugins.toml here; pass --config",
        )
    if rt.settings.allow_unsigned_webhooks:
        log.warning(
            "allow_unsigned_webhooks is on: unsigned webhooks are accepted. "
            "Development only; never expose this server."
        )
    for name, error in rt.plugins.failures.items():
        log.error("plugin %s is not running: %s", name, error)


@cli.command()
@click.option(
    "--listen", default=None, help="HOST:PORT (default from [runner] listen)."
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Worker threads (0 to 64; 0 only receives).",
)
@click.option(
    "--dry-run", is_flag=True, help="Record actions instead of executing them."
)
@click.pass_obj
def serve(state: State, listen: str | None, workers: int | None, dry_run: bool) -> None:
    """Receive webhooks and process them (web and workers in one process)."""
    from runner.server import serve as run_server

    host, port = _listen(listen, state.config)
    rt = _runtime(state, dry_run=dry_run or None)
    _announce(rt)
    if (rt.settings.workers if workers is None else workers) == 0:
        log.warning(
            "no worker: events are stored and acknowledged but not processed by this "
            "process; run `agentmail-runner worker` on the same database"
        )
    try:
        code = run_server(rt, host=host, port=port, workers=workers)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    finally:
        rt.close()
    sys.exit(code)


@cli.command()
@click.option(
    "--listen", default=None, help="HOST:PORT (default from [runner] listen)."
)
@click.pass_obj
def web(state: State, listen: str | None) -> None:
    """Receive and store webhooks only; run `worker` processes to handle them."""
    from runner.server import serve as run_server

    host, port = _listen(listen, state.config)
    rt = _runtime(state)
    _announce(rt)
    try:
        code = run_server(rt, host=host, port=port, workers=0)
    finally:
        rt.close()
    sys.exit(code)


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker threads (1 to 64).",
)
@click.option(
    "--dry-run", is_flag=True, help="Record actions instead of executing them."
)
@click.pass_obj
def worker(state: State, workers: int | None, dry_run: bool) -> None:
    """Process stored events only; run with `web` processes in front."""
    from runner.server import work

    if workers is None and state.config.runner.workers == 0:
        _fail(
            "[runner] workers is 0, so this worker would process nothing: "
            "pass --workers N or set [runner] workers"
        )
    rt = _runtime(state, dry_run=dry_run or None, require_secrets=False)
    _announce(rt)
    try:
        code = work(rt, workers=workers)
    finally:
        rt.close()
    sys.exit(code)


@cli.command()
@click.argument("payload", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default=None, help="POST to a running server's /webhook.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="In-process, on a throwaway store: print the intended actions only.",
)
@click.option("--delivery-id", default=None, help="svix-id to sign with.")
@click.option("--json", "as_json", is_flag=True, help="Print the story as JSON.")
@click.pass_obj
def receive(
    state: State,
    payload: Path,
    url: str | None,
    dry_run: bool,
    delivery_id: str | None,
    as_json: bool,
) -> None:
    """Sign PAYLOAD with the configured secret and deliver it.

    With --url, through the full ingress of a running server; otherwise through an
    in-process one, after which the event is processed here and its story printed.
    """
    body = payload.read_bytes()
    delivery_id = delivery_id or _delivery_id(body)
    if url is not None and dry_run:
        _fail(
            "--dry-run runs in-process; drop --url (the server decides dry-run itself)"
        )
    if url is not None:
        _receive_remote(state.config, url, body, delivery_id)
        return
    _receive_local(state, body, delivery_id, dry_run=dry_run, as_json=as_json)


def _delivery_id(body: bytes) -> str:
    """The same svix-id for the same event, as Svix keeps it across retries."""
    try:
        event_id = json.loads(body).get("event_id")
    except (ValueError, RecursionError, AttributeError):
        event_id = None
    if event_id:
        return "msg_" + uuid.uuid5(uuid.NAMESPACE_URL, str(event_id)).hex
    return "msg_" + uuid.uuid4().hex


def _signer(config: Config) -> Any:
    from runner.verify import SecretError, Verifier

    try:
        return Verifier(config.webhook_secrets)
    except SecretError as exc:
        _fail(str(exc))


def _receive_remote(config: Config, url: str, body: bytes, delivery_id: str) -> None:
    import httpx

    headers = _signer(config).sign(body, delivery_id=delivery_id)
    headers["Content-Type"] = "application/json"
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {exc}")
    click.echo(f"{response.status_code} {response.text.strip()}")
    if response.status_code >= 300:
        sys.exit(1)
    if _answered_dead_letter(response.content):
        _fail("the event became a dead letter: `events show` on the runner says why", 1)


def _answered_dead_letter(answer: bytes) -> bool:
    try:
        return bool(json.loads(answer).get("status") == "dead_letter")
    except (ValueError, AttributeError):
        return False


def _receive_local(
    state: State, body: bytes, delivery_id: str, *, dry_run: bool, as_json: bool
) -> None:
    from runner.events import printable
    from runner.ingress import create_app
    from runner.store import DEAD
    from runner.story import event_story, format_story

    config = state.config
    with tempfile.TemporaryDirectory(prefix="agentmail-runner-") as scratch:
        if dry_run:
            # A dry run must not leave a stored event behind: the real server would
            # then see the real delivery as a duplicate and never act on it.
            database = str(Path(scratch) / "dry-run.db")
            config = _with_runner(config, database=database)
        if not config.webhook_secrets:
            config = _with_runner(
                config, webhook_secrets=["whsec_" + _throwaway_secret()]
            )
        rt = _runtime(_Preloaded(config), dry_run=dry_run or None)
        try:
            headers = _signer(config).sign(body, delivery_id=delivery_id)
            client = create_app(rt).test_client()
            response = client.post(
                "/webhook",
                data=body,
                headers=headers,
                environ_base={"REMOTE_ADDR": "127.0.0.1"},
            )
            answer = response.get_json(silent=True) or {}
            click.echo(
                f"ingress answered {response.status_code} {json.dumps(answer)}",
                err=True,
            )
            if response.status_code != 200:
                sys.exit(1)
            rt.drain()
            row = rt.store.get_event(answer.get("event", ""))
            if row is None:
                _fail("the event was not stored")
            story = event_story(rt.store, row)
            if as_json:
                click.echo(json.dumps(story, indent=2, default=str))
            else:
                click.echo(format_story(story))
            if row.status == DEAD:
                reason = printable(row.last_error or "")
                _fail(f"the event became a dead letter: {reason}", 1)
        finally:
            rt.close()


class _Preloaded(State):
    def __init__(self, config: Config) -> None:
        super().__init__(None)
        self._config = config


def _with_runner(config: Config, **changes: Any) -> Config:
    runner = config.runner.model_copy(update=changes)
    if "webhook_secrets" in changes:
        runner = type(config.runner).model_validate(
            {**config.runner.model_dump(), **changes}
        )
    return Config(runner=runner, plugins=config.plugins, path=config.path)


def _throwaway_secret() -> str:
    import base64

    return base64.b64encode(secrets.token_bytes(24)).decode()


@cli.command()
@click.option("--env-file", default=".env", show_default=True, type=click.Path())
def init(env_file: str) -> None:
    """Write a .env with a fresh webhook signing secret, unless one is set already.

    For trying the runner locally (`receive` signs with the same secret). For real
    deliveries, replace it with the signing secret AgentMail shows for your webhook.
    """
    path = Path(env_file)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if _secret_set_for(path):
        click.echo(f"AGENTMAIL_WEBHOOK_SECRET is already set; {path} left as it is")
        return
    secret = "whsec_" + _throwaway_secret()
    lines = [
        "# Written by `agentmail-runner init`. Replace the secret with your webhook's",
        "# signing secret from AgentMail before real deliveries arrive.",
        f"AGENTMAIL_WEBHOOK_SECRET={secret}",
        "# AGENTMAIL_API_KEY=...   (without it, serve runs in dry-run)",
        "",
    ]
    separator = "\n" if existing and not existing.endswith("\n") else ""
    try:
        path.write_text(existing + separator + "\n".join(lines), encoding="utf-8")
        path.chmod(0o600)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}", 1)
    click.echo(f"wrote a local webhook signing secret to {path}")
    if path.absolute() != _LOCAL_ENV.absolute():
        click.echo(
            f"the runner reads ./.env by itself; load {path} into the environment "
            f"to use it, for example: set -a; . {path}; set +a"
        )


_LOCAL_ENV = Path(".env")


def _secret_set_for(path: Path) -> bool:
    """Whether a webhook secret is set already, in ``path`` or by the environment
    (not counting the one the runner itself loaded from ./.env into it)."""
    from dotenv import dotenv_values

    variable = "AGENTMAIL_WEBHOOK_SECRET"
    if path.exists() and dotenv_values(path).get(variable):
        return True
    from_environment = os.environ.get(variable)
    local = dotenv_values(_LOCAL_ENV).get(variable) if _LOCAL_ENV.exists() else None
    return bool(from_environment) and from_environment != local


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def plugins(state: State, as_json: bool) -> None:
    """List installed plugins: version, hooks, subscriptions, enabled."""
    from runner.loader import load

    config = state.config
    try:
        loaded = load(config, strict=False)
    except ConfigError as exc:
        _fail(str(exc))
    rows: list[dict[str, Any]] = []
    for plugin in loaded.plugins:
        rows.append(
            {
                "name": plugin.name,
                "version": plugin.version,
                "distribution": plugin.distribution,
                "enabled": True,
                "hooks": list(plugin.hooks),
                "subscriptions": list(plugin.subscriptions),
                "error": None,
            }
        )
    seen = {r["name"] for r in rows}
    for name, error in loaded.failures.items():
        rows.append(_listed(name, loaded.available.get(name, ""), True, error))
        seen.add(name)
    for name, dist in sorted(loaded.available.items()):
        if name not in seen:
            rows.append(_listed(name, dist, False, None))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state_word = "enabled" if row["enabled"] else "not enabled"
        if row["error"]:
            state_word = "FAILED"
        click.echo(
            f"{row['name']} {row['version'] or ''}".rstrip() + f"  [{state_word}]"
        )
        if row["hooks"]:
            click.echo(f"  hooks:         {', '.join(row['hooks'])}")
        if row["subscriptions"]:
            click.echo(f"  subscriptions: {', '.join(row['subscriptions'])}")
        if row["error"]:
            click.echo(f"  error:         {row['error']}")
        if not row["enabled"]:
            click.echo(
                f"  enable it with a [plugins.{row['name']}] table in plugins.toml"
            )


def _listed(name: str, dist: str, enabled: bool, error: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "version": "",
        "distribution": dist,
        "enabled": enabled,
        "hooks": [],
        "subscriptions": [],
        "error": error,
    }


@cli.group("config")
def config_group() -> None:
    """Check or show the configuration."""


@config_group.command("check")
@click.option(
    "--serving/--no-serving", default=True, help="Also require webhook secrets."
)
@click.pass_obj
def config_check(state: State, serving: bool) -> None:
    """Validate plugins.toml, the environment, secrets and every plugin's settings."""
    from runner.loader import load
    from runner.verify import SecretError, Verifier

    try:
        config = load_config(state.config_path)
    except ConfigError as exc:
        _fail_config_check(exc)
    problems: list[str] = []
    if serving:
        try:
            Verifier(
                config.webhook_secrets,
                allow_unsigned=config.runner.allow_unsigned_webhooks,
            )
        except SecretError as exc:
            problems.append(str(exc))
    try:
        loaded = load(config, strict=False)
        problems += [f"plugin {n} {e}" for n, e in loaded.failures.items()]
    except ConfigError as exc:
        problems.append(str(exc))
        loaded = None
    if problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    assert loaded is not None
    names = ", ".join(p.name for p in loaded.plugins) or "none"
    where = config.path if config.path and config.path.exists() else "defaults"
    click.echo(f"ok: {where}; plugins: {names}")
    if not config.api_key:
        click.echo("note: no AGENTMAIL_API_KEY, so serve runs in dry-run")


def _fail_config_check(error: ConfigError) -> NoReturn:
    """Report a configuration that does not load, with its plugins' own problems."""
    from runner.config import RunnerSettings
    from runner.loader import load

    problems = [str(error)]
    if error.plugins is not None:
        # The plugins' settings do not depend on [runner]: check them on defaults.
        fallback = Config(runner=RunnerSettings(), plugins=error.plugins)
        try:
            loaded = load(fallback, strict=False)
            problems += [f"plugin {n} {e}" for n, e in loaded.failures.items()]
        except ConfigError as exc:
            problems.append(str(exc))
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    sys.exit(1)


@config_group.command("show")
@click.pass_obj
def config_show(state: State) -> None:
    """Print the effective configuration as JSON, secrets redacted."""
    from runner.loader import load
    from runner.operations import hide_url_password

    config = state.config
    shown: dict[str, Any] = {"runner": redact(config.runner), "plugins": {}}
    for key in ("database", "api_base_url"):
        shown["runner"][key] = hide_url_password(shown["runner"][key])
    try:
        loaded = load(config, strict=False)
    except ConfigError as exc:
        _fail(str(exc))
    for name, table in config.plugins.items():
        plugin = loaded.get(name)
        settings = redact(plugin.config) if plugin and plugin.config is not None else {}
        shown["plugins"][name] = {"enabled": table.get("enabled", True), **settings}
    click.echo(json.dumps(shown, indent=2, default=str))


@cli.group()
def events() -> None:
    """Inspect stored events; retry or replay them."""


def _store(state: State) -> Any:
    from runner.operations import require_store
    from runner.store import Store, StoreUnavailable

    require_store(state.config.runner.database)
    try:
        return Store(state.config.runner.database)
    except StoreUnavailable as exc:
        _fail(f"cannot open the store: {exc}")


@events.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "running", "done", "dead"]),
    default=None,
    help="Only events in this state.",
)
@click.option("--type", "event_type", default=None, help="An event type.")
@click.option("--limit", type=LIMIT, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def events_list(
    state: State, status: str | None, event_type: str | None, limit: int, as_json: bool
) -> None:
    """The most recent events first."""
    from runner.events import printable
    from runner.story import format_time

    store = _store(state)
    try:
        rows = store.list_events(limit=limit, status=status, event_type=event_type)
    finally:
        store.close()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": r.pk,
                        "event_key": r.event_key,
                        "event_type": r.event_type,
                        "status": r.status,
                        "attempts": r.attempts,
                        "received_at": r.received_at,
                        "last_error": r.last_error,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        click.echo("no events")
    for r in rows:
        error = f"  {r.last_error[:60]}" if r.last_error else ""
        click.echo(
            printable(
                f"#{r.pk:<6} {format_time(r.received_at)}  {r.status:<8} "
                f"{r.event_type or '-':<22} {r.event_key}{error}"
            )
        )


@events.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def events_show(state: State, ref: str, as_json: bool) -> None:
    """One event's story: REF is its #number, event id or delivery id."""
    from runner.story import event_story, format_story

    store = _store(state)
    try:
        row = store.get_event(ref)
        if row is None:
            _fail(f"no event {ref}", code=1)
        story = event_story(store, row)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(story, indent=2, default=str))
    else:
        click.echo(format_story(story))


def _add_operations() -> None:
    """events retry/replay, dlq, webhooks, listen and new-plugin."""
    from runner.operations import add_commands

    add_commands(cli, events)


_add_operations()


def _command_word(argv: list[str]) -> str | None:
    """The command named on the command line, past the top-level options."""
    words = iter(argv)
    for word in words:
        if word in ("--config", "--log-level"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _register_plugin_commands() -> None:
    """Let enabled plugins add commands (for example `suppressions`)."""
    argv = sys.argv[1:]
    if _command_word(argv) in cli.commands:
        return  # a built-in command: `serve` loads the plugins once, for itself
    config_path = os.environ.get("AGENTMAIL_RUNNER_CONFIG")
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif arg.startswith("--config="):
            config_path = arg.partition("=")[2]
    try:
        config = load_config(config_path)
        from runner.loader import call_one, load

        loaded = load(config, strict=False)
    except Exception as exc:  # the command that runs reports it in full
        assert isinstance(cli, _RunnerGroup)
        cli.plugin_error = str(exc).splitlines()[0]
        return
    for plugin in loaded.plugins:
        impl = loaded.implementation(plugin.name, "register_commands")
        if impl is not None:
            call_one(
                impl,
                cli=cli,
                config=plugin.config,
                open_state=_state_opener(config, plugin.name),
            )


def _state_opener(config: Config, plugin: str) -> Any:
    """Open the store only when a plugin's command runs, not at every start."""

    def open_state() -> Any:
        from runner.context import PluginState
        from runner.store import Store, StoreUnavailable

        try:
            return PluginState(Store(config.runner.database), plugin)
        except StoreUnavailable as exc:
            _fail(f"cannot open the store: {exc}")

    return open_state


def main() -> None:
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)
    _register_plugin_commands()
    cli(prog_name="agentmail-runner")
