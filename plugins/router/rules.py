"""Evaluate the rules against one message, keeping the evidence for each verdict.

The same evaluation serves the ``route`` hook and ``agentmail-runner route explain``,
so what the explanation shows is what the router does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from runner import Address, Message, parse_addresses

from .config import (
    ADDRESS_FIELDS,
    AllOf,
    AnyOf,
    Condition,
    Match,
    RouterConfig,
    Rule,
)

__all__ = ["Decision", "Facts", "RuleResult", "Verdict", "decide", "evaluate"]

_SNIPPET_CONTEXT = 30


@dataclass(frozen=True)
class Facts:
    """What the rules may look at, gathered once per message."""

    subject: str = ""
    body: str = ""
    sender: tuple[Address, ...] = ()
    recipients: tuple[Address, ...] = ()
    inbox: tuple[Address, ...] = ()
    attachments: tuple[str, ...] = ()
    pdf_text: str = ""
    labels: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, message: Message, *, body: str, pdf_text: str = "") -> Facts:
        return cls(
            subject=message.subject,
            body=body,
            sender=(message.sender,) if message.sender else (),
            recipients=(*message.to, *message.cc, *message.bcc),
            inbox=parse_addresses(message.inbox_id),
            attachments=tuple(a.filename for a in message.attachments if a.filename),
            pdf_text=pdf_text,
            labels=message.labels,
            headers=message.headers,
        )

    def texts(self, match: Match) -> tuple[str, ...]:
        """The strings a contains, regex or equals test looks at."""
        if match.field == "header":
            header = self.headers.get(match.name or "")
            return () if header is None else (header,)
        if match.field in ADDRESS_FIELDS:
            addresses = self.addresses(match)
            if match.operator == "equals":
                return tuple(a.email for a in addresses)
            return tuple(str(a) for a in addresses)
        value: str | tuple[str, ...] = getattr(self, match.field)
        return (value,) if isinstance(value, str) else value

    def addresses(self, match: Match) -> tuple[Address, ...]:
        if match.field == "header":
            return parse_addresses(self.headers.get(match.name or ""))
        found: tuple[Address, ...] = getattr(self, match.field)
        return found


@dataclass(frozen=True)
class Verdict:
    """Whether a condition held, what it was, and what made it hold."""

    matched: bool
    condition: str
    evidence: str = ""
    children: tuple[Verdict, ...] = ()


def evaluate(condition: Condition, facts: Facts) -> Verdict:
    """Every branch is evaluated, not only up to the deciding one, so that an
    explanation can show each condition's own result."""
    if isinstance(condition, Match):
        return _evaluate_match(condition, facts)
    if isinstance(condition, AnyOf):
        return evaluate_group("any", condition.any_, facts)
    if isinstance(condition, AllOf):
        return evaluate_group("all", condition.all_, facts)
    inner = evaluate(condition.not_, facts)
    return Verdict(not inner.matched, "not", children=(inner,))


def evaluate_group(
    combinator: str, conditions: list[Condition], facts: Facts
) -> Verdict:
    children = tuple(evaluate(c, facts) for c in conditions)
    test = any if combinator == "any" else all
    return Verdict(test(c.matched for c in children), combinator, children=children)


def _evaluate_match(match: Match, facts: Facts) -> Verdict:
    evidence = _find(match, facts)
    return Verdict(evidence is not None, match.describe(), evidence or "")


def _find(match: Match, facts: Facts) -> str | None:
    """The text that satisfies the test, or None."""
    if match.operator == "domain":
        wanted = [d.lower().lstrip("@").rstrip(".") for d in match.values]
        for address in facts.addresses(match):
            if any(_in_domain(address.domain, d) for d in wanted):
                return address.email
        return None
    texts = facts.texts(match)
    if match.operator == "equals":
        for text in texts:
            if any(_equal(text, value, match.case_sensitive) for value in match.values):
                return text
        return None
    for text in texts:
        for pattern in match.patterns:
            found = pattern.search(text)
            if found is not None:
                return _snippet(text, found)
    return None


def _in_domain(domain: str, wanted: str) -> bool:
    """The domain itself or one of its subdomains."""
    return domain == wanted or domain.endswith("." + wanted)


def _equal(text: str, value: str, case_sensitive: bool) -> bool:
    if case_sensitive:
        return text.strip() == value.strip()
    return text.strip().casefold() == value.strip().casefold()


def _snippet(text: str, found: re.Match[str]) -> str:
    start = max(found.start() - _SNIPPET_CONTEXT, 0)
    end = min(found.end() + _SNIPPET_CONTEXT, len(text))
    snippet = " ".join(text[start:end].split())
    prefix = "..." if start > 0 else ""
    suffix = "..." if end < len(text) else ""
    return f"{prefix}{snippet}{suffix}"


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome; ``verdict`` is None when an earlier rule stopped."""

    rule: Rule
    verdict: Verdict | None
    stopped_by: str | None = None

    @property
    def matched(self) -> bool:
        return self.verdict is not None and self.verdict.matched


@dataclass(frozen=True)
class Decision:
    """Every rule's result, in the order the rules ran."""

    results: tuple[RuleResult, ...]

    @property
    def matched(self) -> tuple[Rule, ...]:
        return tuple(r.rule for r in self.results if r.matched)

    @property
    def route(self) -> str | None:
        """The route of the first matched rule that names one."""
        return next((rule.route for rule in self.matched if rule.route), None)


def decide(config: RouterConfig, facts: Facts) -> Decision:
    results: list[RuleResult] = []
    stopped_by: str | None = None
    for rule in config.ordered_rules():
        if stopped_by is not None:
            results.append(RuleResult(rule, None, stopped_by))
            continue
        verdict = evaluate_group(rule.combinator, rule.conditions, facts)
        results.append(RuleResult(rule, verdict))
        if verdict.matched and rule.stop:
            stopped_by = rule.name
    return Decision(tuple(results))
