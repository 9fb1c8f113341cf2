"""Find, import, validate and configure plugins.

Plugins are found through the ``agentmail_runner`` entry-point group, built-in ones too.
A plugin runs when plugins.toml has a ``[plugins.NAME]`` table for it that does not say
``enabled = false``; installed plugins without a table are listed but never imported,
so installing a package cannot by itself start sending mail. Entry points are imported
one at a time: one that fails is reported with its name and error and the rest load.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from runner import hookspecs
from runner.config import Config, ConfigError, validation_message
from runner.events import Event

__all__ = ["ENTRY_POINT_GROUP", "LoadedPlugin", "PluginLoadError", "PluginSet", "load"]

ENTRY_POINT_GROUP = "agentmail_runner"
EVENT_HOOKS = hookspecs.STAGES

log = logging.getLogger("agentmail_runner.plugins")


class PluginLoadError(Exception):
    """A plugin could not be loaded and the runner was told to be strict about it."""


@dataclass
class LoadedPlugin:
    name: str
    obj: object
    version: str
    distribution: str
    subscriptions: tuple[str, ...]
    config: Any
    hooks: tuple[str, ...]

    def subscribes_to(self, event: Event) -> bool:
        return any(event.matches(pattern) for pattern in self.subscriptions)


@dataclass
class PluginSet:
    """The enabled, loaded plugins in configuration order, and what went wrong."""

    manager: pluggy.PluginManager
    plugins: list[LoadedPlugin] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    available: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> LoadedPlugin | None:
        return next((p for p in self.plugins if p.name == name), None)

    def implementation(self, plugin: str, hook: str) -> pluggy.HookImpl | None:
        caller = getattr(self.manager.hook, hook)
        return next(
            (impl for impl in caller.get_hookimpls() if impl.plugin_name == plugin),
            None,
        )

    def subscribed(self, event: Event) -> list[LoadedPlugin]:
        return [p for p in self.plugins if p.subscribes_to(event)]

    def subscribed_types(self) -> list[str]:
        return sorted({s for p in self.plugins for s in p.subscriptions})


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def call_one(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
    """Call one plugin's implementation with just the arguments it declares."""
    return impl.function(*(kwargs[name] for name in impl.argnames))


def load(
    config: Config,
    *,
    strict: bool | None = None,
    extra: Sequence[tuple[str, object]] = (),
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> PluginSet:
    """Load what plugins.toml enables. ``extra`` registers objects directly (tests)."""
    strict = config.runner.strict_plugins if strict is None else strict
    found = list(
        entry_points
        if entry_points is not None
        else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    )
    by_name = {ep.name: ep for ep in found}
    providers: dict[str, list[str]] = {}
    for entry in found:
        providers.setdefault(entry.name, []).append(
            _distribution(entry)[0] or entry.value
        )
    enabled = config.enabled_plugins()
    plugin_set = PluginSet(manager=new_manager())
    plugin_set.available = {ep.name: _distribution(ep)[0] for ep in found}
    plugin_set.disabled = [n for n in config.plugins if n not in enabled]
    for name in plugin_set.disabled:
        plugin_set.manager.set_blocked(name)

    extra_names = [name for name, _ in extra]
    for name in enabled:
        if name in extra_names:
            continue
        ep = by_name.get(name)
        if ep is None:
            _fail(
                plugin_set,
                name,
                "is configured in plugins.toml but not installed: install its "
                f"package, or remove [plugins.{name}]",
                strict,
            )
            continue
        if len(providers[name]) > 1:
            # Which one would run depends on the order the packages were installed in.
            _fail(
                plugin_set,
                name,
                "is provided by more than one installed package "
                f"({', '.join(providers[name])}): uninstall all but one",
                strict,
            )
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            _fail(
                plugin_set,
                name,
                f"failed to import: {type(exc).__name__}: {exc}",
                strict,
            )
            continue
        dist, version = _distribution(ep)
        _register(plugin_set, config, name, obj, dist, version, strict)

    for name, obj in extra:
        _register(plugin_set, config, name, obj, "(registered)", "", strict)

    # Configured plugins keep their place in the file; the others follow as given.
    order: dict[str, int] = {}
    for name in [*enabled, *extra_names]:
        order.setdefault(name, len(order))
    plugin_set.plugins.sort(key=lambda p: order.get(p.name, len(order)))
    return plugin_set


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or "", dist.version or ""


def _fail(plugin_set: PluginSet, name: str, message: str, strict: bool) -> None:
    plugin_set.failures[name] = message
    if strict:
        raise PluginLoadError(f"plugin {name} {message}")
    log.error("plugin %s %s; the other plugins still run", name, message)


def _register(
    plugin_set: PluginSet,
    config: Config,
    name: str,
    obj: object,
    dist: str,
    version: str,
    strict: bool,
) -> None:
    manager = plugin_set.manager
    try:
        manager.register(obj, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        _fail(plugin_set, name, f"is not a valid plugin: {exc}", strict)
        return
    try:
        plugin_config = _configure(plugin_set, config, name)
        subscriptions = _subscriptions(plugin_set, name)
    except ConfigError:
        manager.unregister(name=name)
        raise
    except Exception as exc:
        manager.unregister(name=name)
        _fail(plugin_set, name, f"could not start: {type(exc).__name__}: {exc}", strict)
        return
    hooks = tuple(
        caller.name
        for caller in manager.get_hookcallers(obj) or ()
        if not caller.name.startswith("_")
    )
    # pluggy registers an implementation of an unknown hook without complaint (it
    # makes a hook caller with no spec for it), so a spec is what tells them apart.
    unknown = [
        h for h in _declared_hooks(obj) if not getattr(manager.hook, h).has_spec()
    ]
    if unknown:
        manager.unregister(name=name)
        _fail(
            plugin_set,
            name,
            f"implements unknown hook(s) {', '.join(unknown)}; the hooks are listed "
            "in runner/hookspecs.py",
            strict,
        )
        return
    if not subscriptions and any(h in EVENT_HOOKS for h in hooks):
        log.warning("plugin %s implements event hooks but subscribes to nothing", name)
    plugin_set.plugins.append(
        LoadedPlugin(
            name=name,
            obj=obj,
            version=version,
            distribution=dist,
            subscriptions=subscriptions,
            config=plugin_config,
            hooks=hooks,
        )
    )


def _declared_hooks(obj: object) -> list[str]:
    marker = f"{hookspecs.PROJECT}_impl"
    return [attr for attr in dir(obj) if hasattr(getattr(obj, attr, None), marker)]


def _configure(plugin_set: PluginSet, config: Config, name: str) -> Any:
    table = config.plugin_table(name)
    impl = plugin_set.implementation(name, "config_schema")
    schema = call_one(impl) if impl is not None else None
    if schema is None:
        if table:
            keys = ", ".join(sorted(table))
            raise ConfigError(
                f"[plugins.{name}] {keys}: this plugin takes no settings "
                "(remove them; only `enabled` and `timeout_seconds` apply)"
            )
        return None
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise ConfigError(
            f"plugin {name}: config_schema() must return a pydantic model class, "
            f"not {schema!r}"
        )
    try:
        return schema.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, f"[plugins.{name}]", schema)) from exc


def _subscriptions(plugin_set: PluginSet, name: str) -> tuple[str, ...]:
    impl = plugin_set.implementation(name, "subscriptions")
    if impl is None:
        return ()
    declared = call_one(impl) or ()
    if isinstance(declared, str):
        declared = (declared,)
    return tuple(str(pattern) for pattern in declared)
