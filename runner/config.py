"""plugins.toml, the environment and ``.env``: one validated configuration.

The file has a ``[runner]`` table for the core and one ``[plugins.NAME]`` table per
plugin. Secrets are never written inline in production: a value may be
``{ env = "NAME" }`` or ``{ file = "/run/secrets/x" }``. The environment wins over the
file for the settings it names (``AGENTMAIL_API_KEY``, ``AGENTMAIL_BASE_URL``,
``AGENTMAIL_WEBHOOK_SECRET``, ``AGENTMAIL_RUNNER_DATABASE``,
``AGENTMAIL_RUNNER_ADMIN_TOKEN``).
"""

from __future__ import annotations

import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "Config",
    "ConfigError",
    "GuardSettings",
    "PluginConfig",
    "RunnerSettings",
    "Secret",
    "load_config",
    "redact",
    "validation_message",
]

ENV_API_KEY = "AGENTMAIL_API_KEY"
ENV_BASE_URL = "AGENTMAIL_BASE_URL"
ENV_WEBHOOK_SECRET = "AGENTMAIL_WEBHOOK_SECRET"
ENV_DATABASE = "AGENTMAIL_RUNNER_DATABASE"
ENV_ADMIN_TOKEN = "AGENTMAIL_RUNNER_ADMIN_TOKEN"
MIN_ADMIN_TOKEN_LENGTH = 16
# What a database URL may start with (a plain path is a SQLite file).
_DATABASE_SCHEMES = frozenset(
    ("sqlite", "postgres", "postgresql", "postgresql+psycopg")
)


# TCP's highest port; 0 asks the system for a free one.
MAX_PORT = 65535


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting and the fix.

    ``plugins`` holds the file's plugin tables when the file could be read and they
    are well formed, so that their own settings can still be checked.
    """

    def __init__(
        self, message: str, plugins: dict[str, dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.plugins = plugins


def resolve_secret_reference(value: Any) -> Any:
    """Turn ``{ env = "NAME" }`` or ``{ file = "PATH" }`` into the secret's text."""
    if not isinstance(value, Mapping):
        return value
    if set(value) == {"env"}:
        name = str(value["env"])
        if name not in os.environ:
            raise ValueError(
                f"environment variable {name} is not set: export it, or put it in .env"
            )
        return os.environ[name]
    if set(value) == {"file"}:
        path = Path(str(value["file"])).expanduser()
        try:
            # One trailing newline is what editors and `echo` add; keep anything else.
            return path.read_text(encoding="utf-8").removesuffix("\n")
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from exc
    raise ValueError('a secret is a string, { env = "NAME" } or { file = "PATH" }')


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret_reference)]
"""A secret: a string, ``{ env = "NAME" }`` or ``{ file = "PATH" }``; redacted."""


class PluginConfig(BaseModel):
    """Base for plugin configuration schemas: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GuardSettings(BaseModel):
    """Limits on automatic replies, on top of the RFC 3834 rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_replies_per_thread: int = Field(default=5, ge=0)
    thread_window_hours: float = Field(default=24, gt=0)
    max_replies_per_sender: int = Field(default=20, ge=0)
    sender_window_hours: float = Field(default=24, gt=0)
    no_reply_patterns: tuple[str, ...] = (
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "do_not_reply",
        "mailer-daemon",
        "postmaster",
        "bounce",
        "bounces",
    )


class RunnerSettings(BaseModel):
    """The ``[runner]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "127.0.0.1:3000"
    database: str = "agentmail-runner.db"
    webhook_secrets: list[Secret] = Field(default_factory=list)
    allow_unsigned_webhooks: bool = False
    api_key: Secret | None = None
    api_base_url: str | None = None
    dry_run: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    workers: int = Field(default=2, ge=0, le=64)
    worker_nice: int = Field(default=10, ge=0, le=19)
    http_threads: int = Field(default=32, ge=1, le=256)
    max_connections: int = Field(default=1000, ge=10)
    connection_timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=10.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    lease_seconds: float = Field(default=300.0, ge=5)
    plugin_timeout_seconds: float = Field(default=120.0, gt=0)
    api_timeout_seconds: float = Field(default=30.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    drain_seconds: float = Field(default=20.0, ge=0)
    retention_hours: float = Field(default=168.0, ge=72)
    dead_letter_retention_hours: float = Field(default=720.0, ge=72)
    strict_plugins: bool = False
    failed_verifications_per_minute: float = Field(default=30.0, gt=0)
    failed_verifications_burst: int = Field(default=20, ge=1)
    admin_token: Secret | None = None
    dashboard_allow_remote: bool = False
    guard: GuardSettings = Field(default_factory=GuardSettings)

    @field_validator("listen")
    @classmethod
    def _listen_has_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("write HOST:PORT, for example 127.0.0.1:3000")
        if int(port) > MAX_PORT:
            raise ValueError(f"the port must be at most {MAX_PORT}")
        return value

    @field_validator("database")
    @classmethod
    def _a_store_the_runner_has(cls, value: str) -> str:
        # Checked here rather than when serve first connects, which would fail with a
        # traceback about a driver that is not installed.
        scheme, sep, rest = value.partition("://")
        in_memory = value.strip() in ("", ":memory:") or (
            scheme.lower() == "sqlite" and rest in ("", "/", "/:memory:")
        )
        if in_memory:
            raise ValueError(
                "an in-memory store would lose every event when the process ends: "
                "give a file path, such as agentmail-runner.db"
            )
        if sep and scheme.lower() not in _DATABASE_SCHEMES:
            raise ValueError(
                f"{scheme}:// is not a store the runner has: give a SQLite file path "
                "or a postgresql:// URL (the runner connects to PostgreSQL with "
                "psycopg 3)"
            )
        return value

    @field_validator("api_base_url")
    @classmethod
    def _an_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "write the API's http(s) URL, such as https://api.agentmail.to"
            )
        return value

    @model_validator(mode="after")
    def _retries_grow_up_to_their_cap(self) -> RunnerSettings:
        if self.retry_base_seconds > self.retry_max_seconds:
            raise ValueError(
                f"retry_base_seconds ({self.retry_base_seconds:g}) is more than "
                f"retry_max_seconds ({self.retry_max_seconds:g}): the first retry "
                "would wait longer than the longest wait"
            )
        return self

    @field_validator("api_key", "admin_token")
    @classmethod
    def _no_stray_whitespace(cls, value: SecretStr | None) -> SecretStr | None:
        # A newline pasted with a key would end up in an HTTP header: every call would
        # fail, and the error quoting the header would carry the key into the logs.
        if value is not None and value.get_secret_value() != (
            value.get_secret_value().strip()
        ):
            raise ValueError(
                "has stray whitespace (a trailing newline?): copy it again without it"
            )
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"is shorter than {MIN_ADMIN_TOKEN_LENGTH} characters; "
                "generate one with: python3 -c "
                "'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass
class Config:
    """Everything read from plugins.toml and the environment."""

    runner: RunnerSettings
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    def enabled_plugins(self) -> list[str]:
        """Plugin names whose table does not say ``enabled = false``, in file order."""
        return [
            n for n, t in self.plugins.items() if t.get("enabled", True) is not False
        ]

    def plugin_table(self, name: str) -> dict[str, Any]:
        """A plugin's table without the keys the runner itself reads."""
        table = dict(self.plugins.get(name, {}))
        table.pop("enabled", None)
        table.pop("timeout_seconds", None)
        return table

    @property
    def webhook_secrets(self) -> list[str]:
        return [s.get_secret_value() for s in self.runner.webhook_secrets]

    @property
    def api_key(self) -> str | None:
        key = self.runner.api_key
        return key.get_secret_value() if key is not None else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read plugins.toml (a missing default file means defaults) and the environment."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    file_path = Path(path) if path is not None else Path("plugins.toml")
    if file_path.exists():
        try:
            data = tomllib.loads(file_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_path}: not valid TOML: {exc}") from exc
    elif path is not None:
        raise ConfigError(
            f"{file_path}: no such file; pass --config with a plugins.toml"
        )

    unknown = set(data) - {"runner", "plugins"}
    if unknown:
        raise ConfigError(
            f"{file_path}: unknown table(s) {', '.join(sorted(unknown))}: "
            "the file has [runner] and [plugins.NAME] tables"
        )
    # Every problem at once, [runner] and plugin tables alike: one round of fixes.
    problems: list[str] = []
    runner_table = dict(data.get("runner", {}))
    from_environment = _apply_environment(runner_table, env)
    runner: RunnerSettings | None = None
    try:
        runner = RunnerSettings.model_validate(runner_table)
    except ValidationError as exc:
        message = validation_message(exc, "[runner]")
        for key, variable in from_environment.items():
            message = message.replace(f"[runner] {key}", variable)
        problems.append(message)

    plugins = dict(data.get("plugins", {}))
    malformed = [line for n, t in plugins.items() if (line := _table_problem(n, t))]
    problems += malformed
    if problems:
        raise ConfigError("\n".join(problems), None if malformed else plugins)
    assert runner is not None
    return Config(runner=runner, plugins=plugins, path=file_path)


def _table_problem(name: str, table: Any) -> str | None:
    """What is wrong with a plugin table's runner keys, if anything."""
    if not isinstance(table, dict):
        return f"[plugins.{name}] must be a table, not a value"
    if not isinstance(table.get("enabled", True), bool):
        return f"[plugins.{name}] enabled: write true or false"
    budget = table.get("timeout_seconds", 1)
    if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0:
        return f"[plugins.{name}] timeout_seconds: write a number of seconds above 0"
    return None


# The [runner] keys that an environment variable overrides.
_ENVIRONMENT = {
    "webhook_secrets": ENV_WEBHOOK_SECRET,
    "api_key": ENV_API_KEY,
    "api_base_url": ENV_BASE_URL,
    "database": ENV_DATABASE,
    "admin_token": ENV_ADMIN_TOKEN,
}


def _apply_environment(table: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Let the environment win; the keys it set, with the variable that set each."""
    applied = {}
    for key, variable in _ENVIRONMENT.items():
        if env.get(variable):
            value: Any = env[variable]
            if key == "webhook_secrets":
                # Several during a rotation, comma-separated: whsec_ values hold none.
                value = value.split(",")
            table[key] = value
            applied[key] = variable
    return applied


_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it, or check its spelling",
}


def validation_message(exc: ValidationError, table: str, schema: Any = None) -> str:
    """One line per problem: the table, the key, what is wrong and the fix."""
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(table)"
        # A validator's own message, without pydantic's "Value error, " before it.
        problem = str(error["msg"]).removeprefix("Value error, ")
        fix = _FIXES.get(error["type"], "")
        if error["type"] == "extra_forbidden" and schema is not None:
            known = ", ".join(sorted(getattr(schema, "model_fields", {})))
            fix = f"{fix}; the keys are: {known}"
        line = f"{table} {key}: {problem}"
        if fix:
            line += f" ({fix})"
        lines.append(line)
    return "\n".join(lines)


def redact(value: Any) -> Any:
    """A JSON-ready copy of a configuration with every secret shown as ``'***'``."""
    if isinstance(value, BaseModel):
        # Under the names plugins.toml uses ("any", not the attribute "any_").
        value = {
            field.alias or name: getattr(value, name)
            for name, field in type(value).model_fields.items()
        }
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, Mapping):
        return {str(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
