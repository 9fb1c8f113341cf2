"""agentmail-runner: AgentMail webhooks in, durable inbox, pluggy plugins, actions out.

This package's top level is the public plugin interface: what a plugin imports to
implement hooks, declare its configuration and return actions.
"""

from runner.actions import (
    Action,
    AddLabels,
    Forward,
    HttpPost,
    RemoveLabels,
    Reply,
    Send,
)
from runner.config import PluginConfig, Secret
from runner.context import (
    AgentMailReader,
    Context,
    DownloadTooLarge,
    PluginState,
    SendProposal,
)
from runner.errors import PermanentError
from runner.events import (
    Address,
    Attachment,
    Event,
    Message,
    html_to_text,
    parse_addresses,
    printable,
)
from runner.hookspecs import hookimpl

__all__ = [
    "Action",
    "AddLabels",
    "Address",
    "AgentMailReader",
    "Attachment",
    "Context",
    "DownloadTooLarge",
    "Event",
    "Forward",
    "HttpPost",
    "Message",
    "PermanentError",
    "PluginConfig",
    "PluginState",
    "RemoveLabels",
    "Reply",
    "Secret",
    "Send",
    "SendProposal",
    "hookimpl",
    "html_to_text",
    "parse_addresses",
    "printable",
]
