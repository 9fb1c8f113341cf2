"""The loader: entry points one by one, disabled plugins blocked, config validated."""

from __future__ import annotations

import logging
import re
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from runner import Context, Event, hookimpl
from runner.config import Config, ConfigError, load_config
from runner.loader import ENTRY_POINT_GROUP, PluginLoadError, load
from tests.sample_plugins.greeter import GreeterConfig

GREETER = EntryPoint("greeter", "tests.sample_plugins.greeter", ENTRY_POINT_GROUP)
MISSING = EntryPoint("broken", "tests.sample_plugins.no_such_module", ENTRY_POINT_GROUP)
EXPLODING = EntryPoint("exploding", "tests.sample_plugins.exploding", ENTRY_POINT_GROUP)

MISSING_ERROR = (
    "failed to import: ModuleNotFoundError: No module named "
    "'tests.sample_plugins.no_such_module'"
)


def configure(tmp_path: Path, plugins: str, runner: str = "") -> Config:
    path = tmp_path / "plugins.toml"
    path.write_text(f"[runner]\n{runner}\n{plugins}", encoding="utf-8")
    return load_config(path, environ={})


GREETER_TABLE = '[plugins.greeter]\ngreeting = "Hello"\n'


class Bare:
    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["*"]


# -- entry points that fail ------------------------------------------------------------


def test_two_packages_providing_one_plugin_name_load_neither_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = configure(tmp_path, GREETER_TABLE)
    impostor = EntryPoint(
        "greeter", "tests.sample_plugins.exploding", ENTRY_POINT_GROUP
    )

    loaded = load(config, entry_points=[GREETER, impostor])

    assert loaded.plugins == []
    assert loaded.failures == {
        "greeter": "is provided by more than one installed package "
        "(tests.sample_plugins.greeter, tests.sample_plugins.exploding): "
        "uninstall all but one"
    }
    with pytest.raises(PluginLoadError, match=r"^plugin greeter is provided by more"):
        load(config, strict=True, entry_points=[GREETER, impostor])


def test_an_entry_point_that_fails_to_import_is_reported_and_the_rest_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = configure(tmp_path, "[plugins.broken]\n" + GREETER_TABLE)

    with caplog.at_level(logging.ERROR, logger="agentmail_runner.plugins"):
        loaded = load(config, entry_points=[MISSING, GREETER])

    assert [p.name for p in loaded.plugins] == ["greeter"]
    assert loaded.failures == {"broken": MISSING_ERROR}
    assert caplog.messages == [
        f"plugin broken {MISSING_ERROR}; the other plugins still run"
    ]


def test_a_module_that_raises_on_import_is_reported_by_plugin_name(
    tmp_path: Path,
) -> None:
    config = configure(tmp_path, "[plugins.exploding]\n" + GREETER_TABLE)

    loaded = load(config, entry_points=[EXPLODING, GREETER])

    assert loaded.failures == {
        "exploding": "failed to import: RuntimeError: "
        "tests.sample_plugins.exploding was imported"
    }
    assert [p.name for p in loaded.plugins] == ["greeter"]


def test_strict_plugins_makes_an_import_failure_fatal(tmp_path: Path) -> None:
    config = configure(
        tmp_path, "[plugins.broken]\n" + GREETER_TABLE, "strict_plugins = true"
    )

    with pytest.raises(PluginLoadError) as caught:
        load(config, entry_points=[GREETER, MISSING])

    assert str(caught.value) == f"plugin broken {MISSING_ERROR}"


def test_strict_can_be_asked_for_by_the_caller(tmp_path: Path) -> None:
    config = configure(tmp_path, "[plugins.broken]\n")

    with pytest.raises(PluginLoadError, match=re.escape(MISSING_ERROR)):
        load(config, strict=True, entry_points=[MISSING])


# -- what is and is not imported -------------------------------------------------------


def test_a_disabled_plugin_is_never_imported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = configure(
        tmp_path, "[plugins.exploding]\nenabled = false\n" + GREETER_TABLE
    )

    with caplog.at_level(logging.DEBUG, logger="agentmail_runner"):
        loaded = load(config, strict=True, entry_points=[EXPLODING, GREETER])

    assert loaded.failures == {}
    assert loaded.disabled == ["exploding"]
    assert [p.name for p in loaded.plugins] == ["greeter"]
    assert loaded.manager.is_blocked("exploding")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_installed_plugin_without_a_table_is_listed_but_not_imported(
    tmp_path: Path,
) -> None:
    config = configure(tmp_path, GREETER_TABLE)

    loaded = load(config, strict=True, entry_points=[EXPLODING, GREETER])

    assert set(loaded.available) == {"exploding", "greeter"}
    assert loaded.failures == {}
    assert [p.name for p in loaded.plugins] == ["greeter"]


def test_a_configured_plugin_that_is_not_installed_is_reported(tmp_path: Path) -> None:
    config = configure(tmp_path, "[plugins.ghost]\n" + GREETER_TABLE)

    loaded = load(config, entry_points=[GREETER])

    assert loaded.failures == {
        "ghost": "is configured in plugins.toml but not installed: install its "
        "package, or remove [plugins.ghost]"
    }
    assert [p.name for p in loaded.plugins] == ["greeter"]


def test_plugins_load_in_configuration_order_whatever_their_source(
    tmp_path: Path,
) -> None:
    config = configure(
        tmp_path, "[plugins.bare]\n" + GREETER_TABLE + "[plugins.last]\n"
    )

    loaded = load(
        config,
        extra=(("last", Bare()), ("unlisted", Bare()), ("bare", Bare())),
        entry_points=[GREETER],
    )

    assert [p.name for p in loaded.plugins] == ["bare", "greeter", "last", "unlisted"]


def test_a_loaded_plugin_carries_its_validated_config_hooks_and_subscriptions(
    tmp_path: Path,
) -> None:
    config = configure(tmp_path, GREETER_TABLE + "repeat = 2\ntimeout_seconds = 3\n")

    [plugin] = load(config, entry_points=[GREETER]).plugins

    assert plugin.config == GreeterConfig(greeting="Hello", repeat=2)
    assert plugin.subscriptions == ("message.received",)
    assert set(plugin.hooks) == {"act", "config_schema", "subscriptions"}


# -- configuration checked against the plugin's schema ---------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("", "[plugins.greeter] greeting: Field required (add it)"),
        (
            'greeting = "Hi"\ngreting = "typo"\n',
            "[plugins.greeter] greting: Extra inputs are not permitted (remove it, "
            "or check its spelling; the keys are: greeting, repeat)",
        ),
        (
            'greeting = "Hi"\nrepeat = 0\n',
            "[plugins.greeter] repeat: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_config_that_fails_the_plugin_schema_names_the_table_key_and_fix(
    tmp_path: Path, table: str, expected: str
) -> None:
    config = configure(tmp_path, "[plugins.greeter]\n" + table)

    with pytest.raises(ConfigError) as caught:
        load(config, strict=False, entry_points=[GREETER])

    assert str(caught.value) == expected


def test_settings_for_a_plugin_without_a_schema_are_refused(tmp_path: Path) -> None:
    config = configure(tmp_path, "[plugins.bare]\ncolour = 'red'\nsize = 2\n")

    with pytest.raises(ConfigError) as caught:
        load(config, extra=(("bare", Bare()),), entry_points=[])

    assert str(caught.value) == (
        "[plugins.bare] colour, size: this plugin takes no settings "
        "(remove them; only `enabled` and `timeout_seconds` apply)"
    )


class NotAModel:
    @hookimpl
    def config_schema(self) -> Any:
        return dict


def test_a_config_schema_that_is_not_a_pydantic_model_is_refused(
    tmp_path: Path,
) -> None:
    config = configure(tmp_path, "")

    with pytest.raises(ConfigError) as caught:
        load(config, extra=(("weird", NotAModel()),), entry_points=[])

    assert str(caught.value) == (
        "plugin weird: config_schema() must return a pydantic model class, "
        "not <class 'dict'>"
    )
    assert not issubclass(dict, BaseModel)


# -- hook implementations --------------------------------------------------------------


class UnknownHook:
    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def on_message(self, event: Event, context: Context) -> None:
        """Not a hook of this runner."""


def test_a_plugin_implementing_an_unknown_hook_is_refused_by_name(
    tmp_path: Path,
) -> None:
    config = configure(tmp_path, GREETER_TABLE)

    loaded = load(config, extra=(("oddball", UnknownHook()),), entry_points=[GREETER])

    assert loaded.failures == {
        "oddball": "implements unknown hook(s) on_message; the hooks are listed in "
        "runner/hookspecs.py"
    }
    assert [p.name for p in loaded.plugins] == ["greeter"]
    assert loaded.manager.get_plugin("oddball") is None


def test_strict_plugins_makes_an_unknown_hook_fatal(tmp_path: Path) -> None:
    config = configure(tmp_path, "")

    with pytest.raises(PluginLoadError, match="plugin oddball implements unknown"):
        load(config, strict=True, extra=(("oddball", UnknownHook()),), entry_points=[])


class WrongArguments:
    @hookimpl
    def act(self, event: Event, context: Context, mood: str) -> None:
        """Asks for an argument the hook does not give."""


def test_a_hook_asking_for_arguments_the_hook_does_not_give_is_refused(
    tmp_path: Path,
) -> None:
    config = configure(tmp_path, "")

    loaded = load(config, extra=(("moody", WrongArguments()),), entry_points=[])

    assert loaded.plugins == []
    assert loaded.failures["moody"].startswith("is not a valid plugin: ")
    assert "mood" in loaded.failures["moody"]
    assert "'act'" in loaded.failures["moody"]
