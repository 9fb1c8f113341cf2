"""A well-formed plugin with a settings schema, loaded through an entry point."""

from __future__ import annotations

from pydantic import Field

from runner import Context, Event, PluginConfig, Reply, hookimpl


class GreeterConfig(PluginConfig):
    greeting: str
    repeat: int = Field(default=1, ge=1)


@hookimpl
def subscriptions() -> list[str]:
    return ["message.received"]


@hookimpl
def config_schema() -> type[GreeterConfig]:
    return GreeterConfig


@hookimpl
def act(event: Event, context: Context) -> list[Reply]:
    config: GreeterConfig = context.config
    return [Reply(text=" ".join([config.greeting] * config.repeat))]
