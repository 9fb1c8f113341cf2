"""Fixtures for testing agentmail-runner plugins, loaded by pytest by itself.

agentmail-runner registers this module under pytest's ``pytest11`` entry point, so a
plugin's test suite gets these fixtures as soon as agentmail-runner is installed:

``plugin_runner``
    Builds a runner with only the plugin under test loaded, on a temporary store,
    aimed at the loopback AgentMail double: ``runner = plugin_runner(module,
    name="greeter", config={...})``. ``runner.deliver(payload)`` signs the payload,
    posts it through the webhook ingress, lets a worker process it and returns a
    :class:`Delivery`.
``make_event``
    Webhook payloads in the shapes AgentMail sends: ``make_event("message.received",
    subject="Hello")``; keyword arguments set fields of the event's object (the
    message, the bounce...), and every payload gets a new event id.
``intended_actions``
    The actions the plugins returned for every event delivered in the test, in order,
    as ``runner.Reply``, ``runner.Send``... values: compare them with ``==``.
``agentmail_double``
    The loopback AgentMail API (``runner.testing.agentmail_double``):
    ``agentmail_double.sent`` holds the emails that were actually sent.

The fixture names are distinct from the ones a project's own conftest.py is likely to
define. Nothing heavy is imported until a fixture is used.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from runner.actions import Action
    from runner.context import PluginState
    from runner.runtime import Runtime
    from runner.testing.agentmail_double import AgentMailDouble

__all__ = [
    "Delivery",
    "PluginRunner",
    "agentmail_double",
    "build_event",
    "intended_actions",
    "make_event",
    "payload_shape",
    "plugin_runner",
]

# The object each event type carries, and the shipped payload it is built from.
_SHAPES = {
    "message.received": ("message", "message-received.json"),
    "message.sent": ("send", "message-sent.json"),
    "message.delivered": ("delivery", "message-delivered.json"),
    "message.bounced": ("bounce", "message-bounced.json"),
    "message.complained": ("complaint", "message-complained.json"),
    "message.rejected": ("reject", "message-rejected.json"),
    "domain.verified": ("domain", "domain-verified.json"),
}


def _shape_for(event_type: str) -> tuple[str, str]:
    if event_type.startswith("message.received"):
        # The .spam, .blocked and .unauthenticated variants carry the same shape.
        return _SHAPES["message.received"]
    try:
        return _SHAPES[event_type]
    except KeyError:
        known = ", ".join([*_SHAPES, "message.received.spam (and the other variants)"])
        raise ValueError(
            f"no payload shape for {event_type!r}; the shapes are: {known}"
        ) from None


def payload_shape(event_type: str) -> dict[str, Any]:
    """A copy of the shipped payload for an event type, as AgentMail sends it."""
    _object_key, filename = _shape_for(event_type)
    text = (
        importlib.resources.files("runner.testing")
        .joinpath("payloads", filename)
        .read_text(encoding="utf-8")
    )
    payload: dict[str, Any] = json.loads(text)
    payload["event_type"] = event_type
    return payload


def build_event(event_type: str = "message.received", **fields: Any) -> dict[str, Any]:
    """A payload with a new event id; ``fields`` set keys of the event's object.

    ``from_`` sets both ``from`` and ``from_``, as AgentMail sends them. ``event_id``
    sets the event id instead of a new one.
    """
    object_key, _filename = _shape_for(event_type)
    payload = payload_shape(event_type)
    payload["event_id"] = str(fields.pop("event_id", None) or uuid.uuid4())
    target: dict[str, Any] = payload[object_key]
    for key, value in fields.items():
        if key == "from_":
            target["from"] = target["from_"] = value
        else:
            target[key] = copy.deepcopy(value)
    thread = payload.get("thread")
    if isinstance(thread, dict) and "subject" in fields:
        thread["subject"] = fields["subject"]
    return payload


@dataclass
class Delivery:
    """What became of one delivered payload."""

    http_status: int
    """The webhook ingress's answer (200 for an accepted or duplicate delivery)."""
    outcome: str
    """"accepted", "duplicate" or "dead_letter", as the ingress answered."""
    event_key: str
    status: str
    """The event's status after processing: "done", "pending" (to be retried) or
    "dead"."""
    actions: list[Action] = field(default_factory=list)
    """What the plugins returned for this event, in order."""
    story: dict[str, Any] = field(default_factory=dict)
    """Everything the store knows: ledger rows, action outcomes, errors."""

    @property
    def errors(self) -> list[str]:
        """Errors of plugin calls and actions, as ``events show`` lists them."""
        calls = [c["error"] for c in self.story.get("ledger", []) if c["error"]]
        acts = [a["error"] for a in self.story.get("actions", []) if a["error"]]
        return [*calls, *acts]


class PluginRunner:
    """A runner with one plugin loaded; made by the ``plugin_runner`` fixture."""

    def __init__(
        self,
        runtime: Runtime,
        double: AgentMailDouble,
        plugin: str,
        secret: str,
        intended: list[Action],
    ) -> None:
        self.runtime = runtime
        self.double = double
        self.plugin = plugin
        self._secret = secret
        self._intended = intended

    @property
    def state(self) -> PluginState:
        """The plugin's own durable state, as its hooks see it."""
        from runner.context import PluginState

        return PluginState(self.runtime.store, self.plugin)

    def deliver(self, payload: Mapping[str, Any] | bytes) -> Delivery:
        """Sign and post the payload to the webhook ingress, then process it."""
        from runner.actions import action_from_dict
        from runner.ingress import create_app
        from runner.story import event_story
        from runner.verify import Verifier

        if isinstance(payload, bytes):
            body = payload
        else:
            self._seed_message(payload)
            body = json.dumps(payload).encode()
        headers = Verifier([self._secret]).sign(
            body, delivery_id=f"msg_{uuid.uuid4().hex}"
        )
        app = create_app(self.runtime)
        response = app.test_client().post(
            "/webhook",
            data=body,
            headers=headers,
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        answer = response.get_json(silent=True) or {}
        self.runtime.drain()
        key = str(answer.get("event", ""))
        row = self.runtime.store.get_event(key) if key else None
        outcome = str(answer.get("status", ""))
        if row is None:
            return Delivery(response.status_code, outcome, key, "")
        story = event_story(self.runtime.store, row)
        actions = [action_from_dict(a["params"]) for a in story["actions"]]
        if outcome == "accepted":
            self._intended.extend(actions)
        return Delivery(
            http_status=response.status_code,
            outcome=outcome,
            event_key=key,
            status=row.status,
            actions=actions,
            story=story,
        )

    def _seed_message(self, payload: Mapping[str, Any]) -> None:
        """Let the double know the event's message, as AgentMail would: labelling,
        fetching or replying to it then works."""
        message = payload.get("message")
        if not isinstance(message, Mapping):
            return
        inbox_id, message_id = message.get("inbox_id"), message.get("message_id")
        if not (inbox_id and message_id and message.get("thread_id")):
            return
        try:
            self.double.message(str(inbox_id), str(message_id))
        except KeyError:
            self.double.add_message(str(inbox_id), dict(message))


@pytest.fixture
def agentmail_double() -> Iterator[AgentMailDouble]:
    """The loopback AgentMail API; ``.sent`` lists the emails actually sent."""
    from runner.testing.agentmail_double import AgentMailDouble

    with AgentMailDouble() as double:
        yield double


@pytest.fixture
def make_event() -> Callable[..., dict[str, Any]]:
    """``make_event(event_type="message.received", **object_fields)``: a payload."""
    return build_event


@pytest.fixture
def intended_actions() -> list[Action]:
    """Every action the plugins returned in this test, in delivery order."""
    return []


@pytest.fixture
def plugin_runner(
    tmp_path_factory: pytest.TempPathFactory,
    agentmail_double: AgentMailDouble,
    intended_actions: list[Action],
) -> Iterator[Callable[..., PluginRunner]]:
    """``plugin_runner(plugin, name=None, config=None, dry_run=False, **runner)``.

    ``plugin`` is the plugin module (or object), or the name of an installed entry
    point. ``config`` is its ``[plugins.NAME]`` table; ``runner`` sets ``[runner]``
    keys. A plugin that fails to load or a bad table raises at once.
    """
    made: list[Any] = []

    def factory(
        plugin: object,
        *,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        **runner: Any,
    ) -> PluginRunner:
        from runner.config import Config, RunnerSettings
        from runner.runtime import Runtime

        plugin_name = name or _plugin_name(plugin)
        directory = tmp_path_factory.mktemp("agentmail-runner")
        secret = "whsec_" + _test_secret()
        settings = RunnerSettings.model_validate(
            {
                "database": str(Path(directory) / "runner.db"),
                "webhook_secrets": [secret],
                "api_key": agentmail_double.api_key,
                "api_base_url": agentmail_double.url,
                "strict_plugins": True,
                **runner,
            }
        )
        extra = () if isinstance(plugin, str) else ((plugin_name, plugin),)
        runtime = Runtime(
            Config(runner=settings, plugins={plugin_name: dict(config or {})}),
            extra_plugins=extra,
            dry_run=dry_run,
        )
        made.append(runtime)
        return PluginRunner(
            runtime, agentmail_double, plugin_name, secret, intended_actions
        )

    yield factory
    for runtime in made:
        runtime.close()


def _plugin_name(plugin: object) -> str:
    if isinstance(plugin, str):
        return plugin
    module = getattr(plugin, "__name__", None)
    if isinstance(module, str):
        return module.rpartition(".")[2]
    raise TypeError(
        f"cannot tell the name of plugin {plugin!r}: pass name='...' to plugin_runner"
    )


def _test_secret() -> str:
    import base64
    import secrets

    return base64.b64encode(secrets.token_bytes(24)).decode()
