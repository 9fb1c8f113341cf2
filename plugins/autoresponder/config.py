"""The ``[plugins.autoresponder]`` table: templates, or a model when one is set."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PrivateAttr, field_validator, model_validator

from runner import PluginConfig, Secret

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "AutoResponderConfig",
    "Drafting",
    "Persona",
    "Template",
]

DEFAULT_SYSTEM_PROMPT = (
    "You answer email on behalf of the people who run this inbox. Write a short, "
    "friendly and accurate reply in the language of the newest message. When you do "
    "not know something, say that a person will follow up; never invent facts, "
    "prices, dates or promises."
)


class Template(PluginConfig):
    """One reply template and the recipient addresses it answers for."""

    to: str = Field(
        default="*",
        description="Glob on the receiving address, e.g. 'support@*'; '*' for any.",
    )
    text: str = Field(min_length=1)
    html: str | None = None


def _read_prompt(path: Path) -> str:
    try:
        text = path.expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(
            f"cannot read the system prompt file {path}: {exc.strerror}; a relative "
            "path is read from the directory the runner starts in"
        ) from exc
    if not text:
        raise ValueError(f"the system prompt file {path} is empty: write the prompt")
    return text


def _one_prompt(inline: str | None, path: Path | None) -> str | None:
    if inline is not None and path is not None:
        raise ValueError(
            "system_prompt and system_prompt_file are both set: keep one of them"
        )
    return _read_prompt(path) if path is not None else inline


class Persona(PluginConfig):
    """A system prompt, and optionally other model settings, for some of the mail.

    It applies when every condition it names holds: ``to`` matches an address that
    received the message and ``route`` equals the route the router chose.
    """

    name: str = ""
    to: str | None = Field(default=None, description="Glob on the receiving address.")
    route: str | None = Field(default=None, description="The router's route name.")
    system_prompt: str | None = Field(default=None, min_length=1)
    system_prompt_file: Path | None = None
    model: str | None = Field(default=None, min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)

    _prompt: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _conditions_and_prompt(self) -> Self:
        if self.to is None and self.route is None:
            raise ValueError(
                "a persona needs `to` (a recipient glob) or `route` (a router route), "
                "or both; the top-level settings already serve all other mail"
            )
        self._prompt = _one_prompt(self.system_prompt, self.system_prompt_file)
        return self

    @property
    def label(self) -> str:
        return self.name or self.route or self.to or "persona"

    @property
    def prompt(self) -> str | None:
        """The system prompt, read from its file if it has one; None: inherited."""
        return self._prompt

    def matches(self, addresses: Iterable[str], route: str | None) -> bool:
        if self.route is not None and self.route != route:
            return False
        if self.to is None:
            return True
        pattern = self.to.lower()
        return any(fnmatch.fnmatchcase(a, pattern) for a in addresses)


@dataclass(frozen=True)
class Drafting:
    """The settings of one completion request, after a persona's overrides."""

    persona: str
    model: str
    system_prompt: str
    temperature: float | None
    max_tokens: int


class AutoResponderConfig(PluginConfig):
    templates: list[Template] = Field(default_factory=list)

    model: str | None = Field(
        default=None,
        min_length=1,
        description="Set it to draft replies with a language model (LLM mode).",
    )
    api_key: Secret | None = Field(
        default=None,
        description="Defaults to the OPENAI_API_KEY environment variable.",
    )
    base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible server; defaults to OPENAI_BASE_URL.",
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int = Field(default=1024, ge=1)
    max_tokens_parameter: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    system_prompt: str | None = Field(default=None, min_length=1)
    system_prompt_file: Path | None = None
    personas: list[Persona] = Field(default_factory=list)
    require_persona: bool = False

    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_retries: int = Field(default=2, ge=0, le=10)

    history_messages: int = Field(default=10, ge=0)
    history_chars: int = Field(default=8000, ge=0)
    message_chars: int = Field(default=12000, ge=200)
    attachment_chars: int = Field(default=8000, ge=0)
    needs_human_label: str = Field(default="needs-human", min_length=1)

    _prompt: str = PrivateAttr(default=DEFAULT_SYSTEM_PROMPT)

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(
                "base_url is the server's API root, e.g. http://127.0.0.1:11434/v1"
            )
        return value

    @model_validator(mode="after")
    def _llm_settings_hold_together(self) -> Self:
        self._prompt = (
            _one_prompt(self.system_prompt, self.system_prompt_file)
            or DEFAULT_SYSTEM_PROMPT
        )
        if self.model is None:
            return self
        if self.api_key is None and not os.environ.get("OPENAI_API_KEY"):
            raise ValueError(
                "api_key: no API key for the model server: set OPENAI_API_KEY, or "
                'api_key = { env = "NAME" } (a local server that needs no key takes '
                'any text, e.g. api_key = "local")'
            )
        return self

    @property
    def llm(self) -> bool:
        """Whether replies are drafted by a model (else templates answer)."""
        return self.model is not None

    def persona_for(
        self, addresses: Iterable[str], route: str | None
    ) -> Persona | None:
        """The first persona whose conditions hold, in the order of the file."""
        found = list(addresses)
        return next((p for p in self.personas if p.matches(found, route)), None)

    def drafting(self, persona: Persona | None) -> Drafting:
        """The completion settings: the top level, overridden by the persona's."""
        if self.model is None:
            raise ValueError("no model is configured: set model to draft replies")
        if persona is None:
            return Drafting(
                "default", self.model, self._prompt, self.temperature, self.max_tokens
            )
        return Drafting(
            persona=persona.label,
            model=persona.model or self.model,
            system_prompt=persona.prompt or self._prompt,
            temperature=(
                persona.temperature
                if persona.temperature is not None
                else self.temperature
            ),
            max_tokens=persona.max_tokens or self.max_tokens,
        )
