"""How addresses are compared for suppression.

Domains are case-insensitive by RFC 5321. Local parts may legally be case-sensitive,
but no mainstream provider treats them so, and a bounce list errs towards suppressing
too much rather than mailing a dead or complaining address again; so the whole address
is lower-cased. A ``+tag`` sub-address reaches the same mailbox as the address without
it, so the tag is dropped from the key (the address as written is kept for display).
"""

from __future__ import annotations

from runner import parse_addresses

__all__ = ["display_address", "suppression_key"]


def display_address(address: str) -> str:
    """The bare address, without a display name, as it was written."""
    found = parse_addresses(address)
    if found and "@" in found[0].email:
        return found[0].email.strip()
    return address.strip()


def suppression_key(address: str) -> str:
    """The key an address is suppressed under: ``Pat+x@Example.ORG`` gives
    ``pat@example.org``."""
    email = display_address(address)
    local, at, domain = email.rpartition("@")
    if not at or not local:
        return email.lower()
    mailbox = local.split("+", 1)[0] or local
    return f"{mailbox}@{domain}".lower()
