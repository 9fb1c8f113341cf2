"""Auto-responder: answer new mail in its thread.

Template mode (without ``model``) answers from templates chosen by the address that
received the message, as in AgentMail's support/sales example; a message that no
template matches gets no reply.

LLM mode (with ``model``) drafts the reply with a chat completion from OpenAI or any
compatible server. The prompt carries the new content, the thread's earlier messages
and the text the PDF extractor found in attachments, all fenced as data. Whatever the
email says, the model's answer can only become the text of one reply to its sender; a
completion that is empty, refused or cut off sends nothing and labels the message for
a person instead.

Every reply still passes the runner's send guard. The hook keeps no state of its own:
once it has returned, the runner records the reply and never calls it again for that
event, so a retried job sends the same text.
"""

from __future__ import annotations

from runner import Action, AddLabels, Context, Event, Message, Reply, hookimpl

from .config import AutoResponderConfig, Persona, Template
from .llm import request_draft
from .prompt import Conversation, Limits, build_messages, earlier_messages, new_content
from .templates import receiving_addresses, render, template_reply

__all__ = ["AutoResponderConfig", "Persona", "Template", "render"]


@hookimpl
def subscriptions() -> list[str]:
    return ["message.received"]


@hookimpl
def config_schema() -> type[AutoResponderConfig]:
    return AutoResponderConfig


@hookimpl
def act(event: Event, context: Context) -> list[Action]:
    config: AutoResponderConfig = context.config or AutoResponderConfig()
    if event.message is None:
        return []
    if not config.llm:
        return list(template_reply(config.templates, event, context))
    return draft_reply(event, event.message, context, config)


def draft_reply(
    event: Event, message: Message, context: Context, config: AutoResponderConfig
) -> list[Action]:
    """LLM mode: one Reply with the model's text, or a label asking for a person."""
    route = context.get("route")
    persona = config.persona_for(
        receiving_addresses(event), route if isinstance(route, str) else None
    )
    if persona is None and config.require_persona:
        context.log.info("no persona for %s; no reply", message.inbox_id)
        return []
    drafting = config.drafting(persona)

    body = new_content(message, context)
    if body is None:
        return _for_a_person(
            config,
            context,
            "the payload left the body out and there is no AgentMail API key to "
            "fetch it (set AGENTMAIL_API_KEY)",
        )
    conversation = Conversation(
        newest=message,
        body=body,
        earlier=earlier_messages(message, context) if config.history_messages else (),
        attachment_text=_text(context.get("pdf_text")),
    )
    limits = Limits(
        history_messages=config.history_messages,
        history_chars=config.history_chars,
        message_chars=config.message_chars,
        attachment_chars=config.attachment_chars,
    )
    prompt = build_messages(drafting.system_prompt, conversation, limits)

    draft = request_draft(config, drafting, prompt)
    if draft.problem is not None:
        return _for_a_person(config, context, draft.problem)
    context.log.info(
        "drafted a reply of %d characters with %s (persona %s)",
        len(draft.text),
        drafting.model,
        drafting.persona,
    )
    return [Reply(text=draft.text)]


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _for_a_person(
    config: AutoResponderConfig, context: Context, reason: str
) -> list[Action]:
    context.log.warning(
        "no reply sent: %s; labelled %r for a person to answer",
        reason,
        config.needs_human_label,
    )
    return [AddLabels(labels=(config.needs_human_label,))]
