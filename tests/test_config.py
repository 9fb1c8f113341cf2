"""Configuration: the file, the environment, secret references, errors, redaction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from runner.config import (
    Config,
    ConfigError,
    PluginConfig,
    Secret,
    load_config,
    redact,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plugins.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, **environ: str) -> Config:
    return load_config(write(tmp_path, text), environ=environ)


def config_error(tmp_path: Path, text: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, **environ)
    return str(caught.value)


# -- the file and the environment ------------------------------------------------------


def test_the_defaults_apply_when_the_default_file_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    config = load_config(environ={})

    assert config.runner.listen == "127.0.0.1:3000"
    assert (config.runner.host, config.runner.port) == ("127.0.0.1", 3000)
    assert config.runner.max_attempts == 8
    assert config.api_key is None
    assert config.plugins == {}


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(missing, environ={})

    assert str(caught.value) == (
        f"{missing}: no such file; pass --config with a plugins.toml"
    )


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    text = """
[runner]
api_key = "file-key"
api_base_url = "http://127.0.0.1:1/file"
webhook_secrets = ["whsec_ZmlsZQ=="]
database = "file.db"
"""
    config = load_text(
        tmp_path,
        text,
        AGENTMAIL_API_KEY="env-key",
        AGENTMAIL_BASE_URL="http://127.0.0.1:2/env",
        AGENTMAIL_WEBHOOK_SECRET="whsec_b25l,whsec_dHdv",
        AGENTMAIL_RUNNER_DATABASE="env.db",
    )

    assert config.api_key == "env-key"
    assert config.runner.api_base_url == "http://127.0.0.1:2/env"
    assert config.webhook_secrets == ["whsec_b25l", "whsec_dHdv"]
    assert config.runner.database == "env.db"


def test_the_file_applies_where_the_environment_is_silent(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, '[runner]\napi_key = "file-key"\n', AGENTMAIL_API_KEY=""
    )

    assert config.api_key == "file-key"


# -- secret references -----------------------------------------------------------------


def test_a_secret_may_name_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_API_KEY", "from-env")
    monkeypatch.setenv("RUNNER_TEST_SECRET", "whsec_ZW52")

    config = load_text(
        tmp_path,
        '[runner]\napi_key = { env = "RUNNER_TEST_API_KEY" }\n'
        'webhook_secrets = [{ env = "RUNNER_TEST_SECRET" }]\n',
    )

    assert config.api_key == "from-env"
    assert config.webhook_secrets == ["whsec_ZW52"]


def test_a_secret_may_name_a_file_whose_trailing_newline_is_dropped(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("from-file\n", encoding="utf-8")

    config = load_text(
        tmp_path, f"[runner]\napi_key = {{ file = {json.dumps(str(secret))} }}\n"
    )

    assert config.api_key == "from-file"


def test_a_missing_environment_variable_is_named_with_the_fix(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, '[runner]\napi_key = { env = "RUNNER_TEST_UNSET_VARIABLE" }\n'
    )

    assert message.startswith("[runner] api_key: ")
    assert message.endswith(
        "environment variable RUNNER_TEST_UNSET_VARIABLE is not set: export it, "
        "or put it in .env"
    )


def test_an_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"

    message = config_error(
        tmp_path, f"[runner]\napi_key = {{ file = {json.dumps(str(missing))} }}\n"
    )

    assert message.startswith("[runner] api_key: ")
    assert message.endswith(
        f"cannot read secret file {missing}: No such file or directory"
    )


def test_an_unknown_kind_of_secret_reference_says_what_is_accepted(
    tmp_path: Path,
) -> None:
    message = config_error(tmp_path, '[runner]\napi_key = { vault = "x" }\n')

    assert message.startswith("[runner] api_key: ")
    assert message.endswith(
        'a secret is a string, { env = "NAME" } or { file = "PATH" }'
    )


def test_a_plugin_schema_may_take_secret_references(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Settings(PluginConfig):
        token: Secret

    monkeypatch.setenv("RUNNER_TEST_TOKEN", "t0ken")

    settings = Settings.model_validate({"token": {"env": "RUNNER_TEST_TOKEN"}})

    assert settings.token.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(settings)


# -- errors that name the culprit and the fix ------------------------------------------


def test_an_unknown_table_is_named_with_the_tables_there_are(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 1\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert str(caught.value) == (
        f"{path}: unknown table(s) server: the file has [runner] and "
        "[plugins.NAME] tables"
    )


def test_an_unknown_runner_key_is_named_with_the_fix(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[runner]\nwrokers = 3\n")

    assert message == (
        "[runner] wrokers: Extra inputs are not permitted "
        "(remove it, or check its spelling)"
    )


@pytest.mark.parametrize("listen", ["3000", ":3000", "localhost", "127.0.0.1:http"])
def test_a_bad_listen_address_is_named_with_an_example(
    tmp_path: Path, listen: str
) -> None:
    message = config_error(tmp_path, f"[runner]\nlisten = {json.dumps(listen)}\n")

    assert message == ("[runner] listen: write HOST:PORT, for example 127.0.0.1:3000")


def test_a_port_beyond_65535_is_refused_rather_than_wrapped(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[runner]\nlisten = "127.0.0.1:99999"\n')

    assert message == ("[runner] listen: the port must be at most 65535")


def test_every_problem_in_the_runner_table_is_listed(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, '[runner]\nlisten = "3000"\nworkers = "many"\nretention_hours = 1\n'
    )

    lines = message.splitlines()
    assert len(lines) == 3
    assert {line.split(":")[0] for line in lines} == {
        "[runner] listen",
        "[runner] workers",
        "[runner] retention_hours",
    }


def test_a_file_that_is_not_toml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[runner\n")

    with pytest.raises(ConfigError, match=re.escape(f"{path}: not valid TOML: ")):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[plugins]\nrouter = 1\n", "[plugins.router] must be a table, not a value"),
        (
            '[plugins.router]\nenabled = "no"\n',
            "[plugins.router] enabled: write true or false",
        ),
        (
            '[plugins.router]\ntimeout_seconds = "soon"\n',
            "[plugins.router] timeout_seconds: write a number of seconds above 0",
        ),
        (
            "[plugins.router]\ntimeout_seconds = 0\n",
            "[plugins.router] timeout_seconds: write a number of seconds above 0",
        ),
    ],
)
def test_a_bad_plugin_table_is_named(tmp_path: Path, text: str, expected: str) -> None:
    assert config_error(tmp_path, text) == expected


def test_every_problem_is_named_at_once_runner_and_plugin_tables_alike(
    tmp_path: Path,
) -> None:
    text = (
        '[runner]\nworkers = "many"\n'
        "[plugins]\nrouter = 1\n"
        '[plugins.bounces]\nenabled = "no"\n'
    )

    assert config_error(tmp_path, text).splitlines() == [
        "[runner] workers: Input should be a valid integer, unable to parse string "
        "as an integer",
        "[plugins.router] must be a table, not a value",
        "[plugins.bounces] enabled: write true or false",
    ]


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        (
            ":memory:",
            "[runner] database: an in-memory store would lose every event when the "
            "process ends: give a file path, such as agentmail-runner.db",
        ),
        ("sqlite://", "[runner] database: an in-memory store would lose every event"),
        (
            "mysql://amr:hunter2@127.0.0.1/amr",
            "[runner] database: mysql:// is not a store the runner has: give a SQLite "
            "file path or a postgresql:// URL (the runner connects to PostgreSQL with "
            "psycopg 3)",
        ),
        (
            "postgresql+psycopg2://127.0.0.1/amr",
            "[runner] database: postgresql+psycopg2:// is not a store the runner has",
        ),
    ],
)
def test_a_database_the_runner_cannot_use_is_refused_before_it_starts(
    tmp_path: Path, database: str, expected: str
) -> None:
    message = config_error(tmp_path, f"[runner]\ndatabase = {json.dumps(database)}\n")

    assert message.startswith(expected)
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "database",
    [
        "agentmail-runner.db",
        "sqlite:///var/lib/amr/events.db",
        "postgres://127.0.0.1/amr",
        "postgresql://127.0.0.1/amr",
        "postgresql+psycopg://127.0.0.1/amr",
    ],
)
def test_the_stores_the_runner_has_are_accepted(tmp_path: Path, database: str) -> None:
    config = load_text(tmp_path, f"[runner]\ndatabase = {json.dumps(database)}\n")

    assert config.runner.database == database


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/api", "https://"])
def test_an_api_base_url_that_is_not_http_is_refused(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, f"[runner]\napi_base_url = {json.dumps(url)}\n")

    assert message == (
        "[runner] api_base_url: write the API's http(s) URL, such as "
        "https://api.agentmail.to"
    )


def test_a_first_retry_longer_than_the_longest_is_refused(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, "[runner]\nretry_base_seconds = 100\nretry_max_seconds = 1\n"
    )

    assert message == (
        "[runner] (table): retry_base_seconds (100) is more than retry_max_seconds "
        "(1): the first retry would wait longer than the longest wait"
    )


def test_plugin_tables_keep_file_order_and_enabled_false_disables(
    tmp_path: Path,
) -> None:
    config = load_text(
        tmp_path,
        "[plugins.zeta]\n[plugins.alpha]\nenabled = false\n"
        "[plugins.mid]\ntimeout_seconds = 5\ncolour = 'red'\n",
    )

    assert config.enabled_plugins() == ["zeta", "mid"]
    assert config.plugin_table("mid") == {"colour": "red"}
    assert config.plugin_table("alpha") == {}


# -- redaction -------------------------------------------------------------------------


def test_redact_hides_every_secret_and_keeps_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_API_KEY", "sk-very-secret")
    config = load_text(
        tmp_path,
        '[runner]\napi_key = { env = "RUNNER_TEST_API_KEY" }\n'
        'webhook_secrets = ["whsec_c2VjcmV0"]\nworkers = 3\n',
    )

    shown = redact(config.runner)

    assert shown["api_key"] == "***"
    assert shown["webhook_secrets"] == ["***"]
    assert shown["workers"] == 3
    assert shown["guard"]["max_replies_per_thread"] == 5
    text = json.dumps(shown)
    assert "sk-very-secret" not in text
    assert "whsec_c2VjcmV0" not in text
    assert "sk-very-secret" not in repr(config.runner)


def test_redact_shows_an_unset_secret_as_none() -> None:
    class Settings(PluginConfig):
        token: Secret | None = None
        name: str = "x"

    assert redact(Settings()) == {"token": None, "name": "x"}


def test_redact_shows_fields_under_the_names_the_file_uses() -> None:
    class Rule(BaseModel):
        any_: list[str] = Field(alias="any")
        label: str = "billing"

    assert redact(Rule.model_validate({"any": ["invoice"]})) == {
        "any": ["invoice"],
        "label": "billing",
    }


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTMAIL_API_KEY", "am_key\n"),
        ("AGENTMAIL_RUNNER_ADMIN_TOKEN", " a-long-enough-admin-token"),
    ],
)
def test_a_key_with_stray_whitespace_is_refused_naming_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no plugins.toml: the defaults and the environment

    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={variable: value})

    assert str(caught.value) == (
        f"{variable}: has stray whitespace (a trailing newline?): "
        "copy it again without it"
    )
