"""The router's settings: endpoints and ordered rules, all checked at start-up.

A mistake in a rule (a regular expression that does not compile, an operator that
does not fit its field, a placeholder that does not exist, an endpoint that is not
defined) stops the runner before the first event, with a message that names the rule,
the key and the fix, rather than surfacing as a silently unmatched message later.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from runner import PluginConfig, Secret, parse_addresses

__all__ = [
    "ADDRESS_FIELDS",
    "FIELDS",
    "PLACEHOLDERS",
    "AllOf",
    "AnyOf",
    "Condition",
    "Endpoint",
    "GitHubEndpoint",
    "JsonEndpoint",
    "Match",
    "NotOf",
    "Post",
    "RouterConfig",
    "Rule",
    "SlackEndpoint",
]

FieldName = Literal[
    "subject",
    "body",
    "sender",
    "recipients",
    "inbox",
    "attachments",
    "pdf_text",
    "labels",
    "header",
]
FIELDS: tuple[str, ...] = get_args(FieldName)
ADDRESS_FIELDS = frozenset({"sender", "recipients", "inbox"})
OPERATORS = ("contains", "regex", "equals", "domain")

PLACEHOLDERS = frozenset(
    {
        "subject",
        "sender",
        "sender_email",
        "sender_name",
        "inbox",
        "to",
        "body",
        "preview",
        "labels",
        "attachments",
        "rule",
        "route",
        "event_id",
        "message_id",
        "thread_id",
    }
)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

DEFAULT_TEXT = "{sender} wrote to {inbox}: {subject}"
DEFAULT_ISSUE_TITLE = "{subject}"
DEFAULT_ISSUE_BODY = "Reported by {sender} to {inbox}.\n\n{body}"
GITHUB_API_URL = "https://api.github.com"


def problem(text: str) -> PydanticCustomError:
    """A validation error whose message is ``text`` exactly (no "Value error, ")."""
    return PydanticCustomError("router", "{text}", {"text": text})


def _strings(value: Any) -> Any:
    """Let a single string stand for a list of one."""
    return [value] if isinstance(value, str) else value


Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]


def _check_placeholders(template: str) -> str:
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - PLACEHOLDERS)
    if unknown:
        names = ", ".join("{" + name + "}" for name in unknown)
        known = " ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))
        raise problem(f"unknown placeholder {names}; the placeholders are: {known}")
    return template


Template = Annotated[str, Field(min_length=1), AfterValidator(_check_placeholders)]


# -- conditions ----------------------------------------------------------------


class Match(PluginConfig):
    """One test on one field of the message, with exactly one operator."""

    field: FieldName
    name: str | None = Field(
        default=None, min_length=1, description="The header, for field = header"
    )
    contains: Strings | None = None
    regex: Strings | None = None
    equals: Strings | None = None
    domain: Strings | None = None
    words: bool = Field(default=False, description="contains: whole words only")
    case_sensitive: bool = False

    _patterns: tuple[re.Pattern[str], ...] = PrivateAttr(default=())

    @field_validator("contains", "regex", "equals", "domain")
    @classmethod
    def _values_not_empty(
        cls, value: tuple[str, ...] | None, info: ValidationInfo
    ) -> tuple[str, ...] | None:
        if value is not None and (not value or not all(value)):
            raise problem(
                f"{info.field_name} needs at least one non-empty string to compare"
            )
        return value

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise problem(
                    f"{pattern!r} is not a valid regular expression ({exc}); fix the "
                    "pattern (escape a literal ( [ { . * + ? with a backslash), or "
                    "use contains for plain text"
                ) from None
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Match:
        given = [op for op in OPERATORS if getattr(self, op) is not None]
        if len(given) != 1:
            found = ", ".join(given) or "none"
            raise problem(
                f"give exactly one operator of {', '.join(OPERATORS)} (found {found})"
            )
        if (self.field == "header") != (self.name is not None):
            raise problem(
                'field = "header" needs name = "Header-Name", and name is only '
                "for headers"
            )
        if self.domain is not None and not (
            self.field in ADDRESS_FIELDS or self.field == "header"
        ):
            raise problem(
                f"domain compares addresses, but {self.field} holds none: use it on "
                "sender, recipients, inbox or a header, or use contains"
            )
        if self.words and self.contains is None:
            raise problem("words only applies to contains: remove it")
        return self

    def model_post_init(self, context: Any) -> None:
        flags = 0 if self.case_sensitive else re.IGNORECASE
        if self.regex is not None:
            sources = list(self.regex)
        elif self.contains is not None:
            escaped = (re.escape(needle) for needle in self.contains)
            sources = [rf"(?<!\w){e}(?!\w)" if self.words else e for e in escaped]
        else:
            sources = []
        self._patterns = tuple(re.compile(source, flags) for source in sources)

    @property
    def operator(self) -> str:
        return next(op for op in OPERATORS if getattr(self, op) is not None)

    @property
    def values(self) -> tuple[str, ...]:
        values: tuple[str, ...] = getattr(self, self.operator)
        return values

    @property
    def patterns(self) -> tuple[re.Pattern[str], ...]:
        """Compiled searches for contains and regex (empty for equals and domain)."""
        return self._patterns

    def describe(self) -> str:
        subject = f"header {self.name}" if self.field == "header" else self.field
        shown = " or ".join(f'"{value}"' for value in self.values)
        options = []
        if self.words:
            options.append("whole words")
        if self.case_sensitive:
            options.append("case-sensitive")
        suffix = f" ({', '.join(options)})" if options else ""
        return f"{subject} {self.operator} {shown}{suffix}"


class AnyOf(PluginConfig):
    """True when at least one of its conditions is."""

    any_: list[Condition] = Field(alias="any", min_length=1)


class AllOf(PluginConfig):
    """True when every one of its conditions is (an empty list is always true)."""

    all_: list[Condition] = Field(alias="all")


class NotOf(PluginConfig):
    """True when its condition is not."""

    not_: Condition = Field(alias="not")


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, PluginConfig):
        return {Match: "#match", AnyOf: "#any", AllOf: "#all", NotOf: "#not"}.get(
            type(value)
        )
    if not isinstance(value, dict):
        return None
    groups = [key for key in ("any", "all", "not") if key in value]
    if len(groups) == 1 and "field" not in value:
        return "#" + groups[0]
    if not groups and "field" in value:
        return "#match"
    return None


# Tags start with "#" so that error locations can drop them (see _rule_errors).
Condition = Annotated[
    Annotated[Match, Tag("#match")]
    | Annotated[AnyOf, Tag("#any")]
    | Annotated[AllOf, Tag("#all")]
    | Annotated[NotOf, Tag("#not")],
    Discriminator(
        _condition_kind,
        custom_error_type="router_condition",
        custom_error_message=(
            'a condition is { field = "subject", contains = "word" } (or regex, '
            "equals, domain), or one group: { any = [...] }, { all = [...] }, "
            "{ not = {...} }"
        ),
    ),
]

AnyOf.model_rebuild()
AllOf.model_rebuild()
NotOf.model_rebuild()


def walk(conditions: list[Condition]) -> Iterator[Match]:
    """Every leaf under a list of conditions."""
    for condition in conditions:
        if isinstance(condition, Match):
            yield condition
        elif isinstance(condition, AnyOf):
            yield from walk(condition.any_)
        elif isinstance(condition, AllOf):
            yield from walk(condition.all_)
        else:
            yield from walk([condition.not_])


# -- endpoints -----------------------------------------------------------------


def _http_url(value: str, key: str) -> str:
    if not re.match(r"https?://[^/\s]+", value):
        # The value is not repeated: a webhook URL is often itself a secret.
        raise problem(f"{key} must be an http:// or https:// URL")
    return value


class _Endpoint(PluginConfig):
    headers: dict[str, Secret] = Field(default_factory=dict)


class _TextEndpoint(_Endpoint):
    url: Secret
    token: Secret | None = None
    text: Template = DEFAULT_TEXT

    @field_validator("url")
    @classmethod
    def _url(cls, value: Any) -> Any:
        _http_url(value.get_secret_value(), "url")
        return value


class SlackEndpoint(_TextEndpoint):
    """A Slack-style incoming webhook: receives ``{"text": ...}``."""

    kind: Literal["slack"]


class JsonEndpoint(_TextEndpoint):
    """Any HTTP endpoint: receives a JSON description of the message and the rule."""

    kind: Literal["json"]


class GitHubEndpoint(_Endpoint):
    """A GitHub repository: each post opens an issue through the REST API."""

    kind: Literal["github"]
    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    token: Secret
    api_url: str = GITHUB_API_URL
    title: Template = DEFAULT_ISSUE_TITLE
    body: Template = DEFAULT_ISSUE_BODY
    labels: Strings = ()

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return _http_url(value, "api_url").rstrip("/")


def _endpoint_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


Endpoint = Annotated[
    Annotated[SlackEndpoint, Tag("slack")]
    | Annotated[JsonEndpoint, Tag("json")]
    | Annotated[GitHubEndpoint, Tag("github")],
    Discriminator(
        _endpoint_kind,
        custom_error_type="router_endpoint",
        custom_error_message='give kind = "slack", "json" or "github"',
    ),
]


# -- rules ---------------------------------------------------------------------


class Post(PluginConfig):
    """Post to a named endpoint, optionally with this rule's own templates."""

    endpoint: str
    text: Template | None = None
    title: Template | None = None
    body: Template | None = None
    labels: Strings | None = None


def _post(value: Any) -> Any:
    if isinstance(value, str):
        return {"endpoint": value}
    return value


def _addresses(value: tuple[str, ...]) -> tuple[str, ...]:
    for address in value:
        found = parse_addresses(address)
        if len(found) != 1 or "@" not in found[0].email:
            raise problem(
                f"{address!r} is not one email address: write name@example.com"
            )
    return value


Addresses = Annotated[
    tuple[str, ...], BeforeValidator(_strings), AfterValidator(_addresses)
]


class Rule(PluginConfig):
    """Conditions (``any`` or ``all``) and what to do when they hold."""

    name: str = Field(min_length=1)
    priority: int = 0
    stop: bool = False
    any_: list[Condition] | None = Field(default=None, alias="any", min_length=1)
    all_: list[Condition] | None = Field(default=None, alias="all")
    labels: Strings = ()
    forward: Addresses = ()
    reply: Template | None = None
    post: tuple[Annotated[Post, BeforeValidator(_post)], ...] = ()
    route: str | None = Field(default=None, min_length=1)

    @model_validator(mode="wrap")
    @classmethod
    def _named(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Put the rule's name in front of every problem found inside it."""
        name = data.get("name") if isinstance(data, dict) else None
        who = f"rule {name!r}" if isinstance(name, str) and name else "a rule"
        try:
            rule = handler(data)
        except ValidationError as exc:
            raise problem(f"{who}: {_rule_errors(exc)}") from None
        incomplete = rule._incomplete() if isinstance(rule, Rule) else None
        if incomplete:
            raise problem(f"{who}: {incomplete}")
        return rule

    def _incomplete(self) -> str | None:
        if (self.any_ is None) == (self.all_ is None):
            return (
                "give exactly one of any = [...] or all = [...] (all = [] matches "
                "every message)"
            )
        if not (self.labels or self.forward or self.reply or self.post or self.route):
            return "this rule does nothing: give labels, forward, reply, post or route"
        return None

    @property
    def conditions(self) -> list[Condition]:
        return self.any_ if self.any_ is not None else (self.all_ or [])

    @property
    def combinator(self) -> str:
        return "any" if self.any_ is not None else "all"


_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it, or check its spelling",
    "literal_error": "use one of the listed values",
}


def _rule_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(p) for p in error["loc"] if not str(p).startswith("#"))
        message = str(error["msg"]).removeprefix("Value error, ")
        fix = _FIXES.get(error["type"])
        text = f"{key}: {message}" if key else message
        lines.append(f"{text} ({fix})" if fix else text)
    return "; ".join(lines)


class RouterConfig(PluginConfig):
    """The ``[plugins.router]`` table."""

    endpoints: dict[str, Endpoint] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> RouterConfig:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise problem(
                    f"rule {rule.name!r} is defined twice: give each rule its own name"
                )
            seen.add(rule.name)
            for post in rule.post:
                self._check_post(rule, post)
        return self

    def _check_post(self, rule: Rule, post: Post) -> None:
        endpoint = self.endpoints.get(post.endpoint)
        if endpoint is None:
            known = ", ".join(sorted(self.endpoints)) or "none yet"
            raise problem(
                f"rule {rule.name!r} post: no endpoint {post.endpoint!r}; define "
                f"[plugins.router.endpoints.{post.endpoint}] (defined: {known})"
            )
        if isinstance(endpoint, GitHubEndpoint):
            misplaced = ["text"] if post.text is not None else []
        else:
            misplaced = [
                key for key in ("title", "body", "labels") if getattr(post, key)
            ]
        if misplaced:
            fits = "title, body, labels" if endpoint.kind == "github" else "text"
            raise problem(
                f"rule {rule.name!r} post to {post.endpoint!r}: "
                f"{', '.join(misplaced)} does not apply to a {endpoint.kind} "
                f"endpoint (it takes {fits})"
            )

    def templates(self) -> Iterator[str]:
        """Every template the rules and endpoints may render."""
        for endpoint in self.endpoints.values():
            if isinstance(endpoint, GitHubEndpoint):
                yield from (endpoint.title, endpoint.body)
            else:
                yield endpoint.text
        for rule in self.rules:
            if rule.reply is not None:
                yield rule.reply
            for post in rule.post:
                yield from (t for t in (post.text, post.title, post.body) if t)

    def ordered_rules(self) -> list[Rule]:
        """Rules in the order they run: lower priority first, then file order."""
        return sorted(self.rules, key=lambda rule: rule.priority)
