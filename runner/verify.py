"""Prove that a webhook request really comes from AgentMail.

Two schemes are accepted:

* Svix / Standard Webhooks (what AgentMail sends): ``svix-id``, ``svix-timestamp`` and
  ``svix-signature`` headers, or the same under the ``webhook-`` prefix, signed with the
  endpoint's ``whsec_`` secret. The ``svix`` library does the HMAC; this module only
  picks the headers out, checks the timestamp first so that the reasons it gives are
  precise, and turns every failure into :class:`VerificationError`.
* ``X-AgentMail-Signature: sha256=<hex>``, the seed guide's scheme: HMAC-SHA256 of the
  raw body keyed with the secret's UTF-8 bytes. It carries no timestamp, so replay
  protection rests on the caller's dedup by event id.

Several secrets may be configured at once so that a secret can be rotated without
refusing deliveries signed with the old one. Everything derived from the secrets is
built once in :class:`Verifier`'s constructor because :meth:`Verifier.verify` runs on
every request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from standardwebhooks.webhooks import Webhook as StandardWebhook
from svix.webhooks import Webhook as SvixWebhook
from svix.webhooks import WebhookVerificationError

__all__ = [
    "HeaderItems",
    "SecretError",
    "VerificationError",
    "Verified",
    "Verifier",
    "check_secret",
]

_WHSEC_PREFIX: Final = "whsec_"

# The svix library refuses anything more than five minutes off, whatever we want.
_LIBRARY_TOLERANCE: Final = 300

# Real timestamps have ten digits; the cap keeps int() away from absurdly long input.
_MAX_TIMESTAMP_DIGITS: Final = 12

_SHA256_SIZE: Final = hashlib.sha256().digest_size
_MALFORMED_HMAC: Final = "malformed X-AgentMail-Signature header"

_SVIX_ID: Final = "svix-id"
_SVIX_TIMESTAMP: Final = "svix-timestamp"
_SVIX_SIGNATURE: Final = "svix-signature"
_WEBHOOK_ID: Final = "webhook-id"
_WEBHOOK_TIMESTAMP: Final = "webhook-timestamp"
_WEBHOOK_SIGNATURE: Final = "webhook-signature"
_AGENTMAIL_SIGNATURE: Final = "x-agentmail-signature"

_SVIX_NAMES: Final = frozenset(
    {
        _SVIX_ID,
        _SVIX_TIMESTAMP,
        _SVIX_SIGNATURE,
        _WEBHOOK_ID,
        _WEBHOOK_TIMESTAMP,
        _WEBHOOK_SIGNATURE,
    }
)
_WANTED_NAMES: Final = _SVIX_NAMES | {_AGENTMAIL_SIGNATURE}


class HeaderItems(Protocol):
    """Anything with ``items()`` of name/value pairs: a ``Mapping[str, str]`` or
    werkzeug's ``Headers`` (which is not a Mapping as far as the type checker knows)."""

    def items(self) -> Iterable[tuple[str, str]]: ...


class VerificationError(Exception):
    """The request is not authentic.

    ``str()`` is a short reason that is safe to log and to return to the client: it
    never contains the body, a header value or a secret.
    """


class SecretError(ValueError):
    """A configured secret cannot be used; the message names the setting and the fix."""


@dataclass(frozen=True)
class Verified:
    """What a successful verification established about the request."""

    scheme: str
    """``"svix"``, ``"hmac"`` or ``"unsigned"``."""
    delivery_id: str
    """The signed ``svix-id`` / ``webhook-id``; ``""`` for the other schemes."""
    timestamp: int | None
    """The signed unix timestamp; None for the schemes that have none."""


_UNSIGNED: Final = Verified(scheme="unsigned", delivery_id="", timestamp=None)
_HMAC: Final = Verified(scheme="hmac", delivery_id="", timestamp=None)


# A plain secret (for X-AgentMail-Signature) shorter than this is refused.
MIN_PLAIN_SECRET_LENGTH = 16


def check_secret(value: str, setting: str) -> None:
    """Raise :class:`SecretError` if ``value`` cannot be a webhook secret.

    A ``whsec_`` value must be base64 after the prefix (padding may be left off); any
    other non-empty value is taken as a plain secret for ``X-AgentMail-Signature``. The
    message never repeats the value.
    """
    if not value:
        raise SecretError(
            f"{setting} is empty: set it to the endpoint's whsec_ signing secret"
        )
    if value != value.strip():
        raise SecretError(
            f"{setting} has stray whitespace (a trailing newline?): "
            "copy the secret again without it"
        )
    if not value.startswith(_WHSEC_PREFIX):
        if len(value) < MIN_PLAIN_SECRET_LENGTH:
            raise SecretError(
                f"{setting} is a plain secret of {len(value)} characters, fewer than "
                f"{MIN_PLAIN_SECRET_LENGTH}: anyone could guess it. Use the endpoint's "
                "whsec_ signing secret"
            )
        return
    encoded = value[len(_WHSEC_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(
            f"{setting} starts with whsec_ but the rest is not valid base64: copy the "
            "endpoint's signing secret again, exactly as the dashboard shows it"
        ) from None
    if not key:
        raise SecretError(
            f"{setting} is whsec_ with no key after it: copy the endpoint's whole "
            "signing secret"
        )


@dataclass(frozen=True)
class _SvixKey:
    verifier: SvixWebhook
    # svix's own sign() only takes a str body; standardwebhooks (which svix wraps)
    # signs bytes as they are, which a non-UTF-8 body needs.
    signer: StandardWebhook


class Verifier:
    """Verify webhook requests against the configured secrets."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        tolerance_seconds: int = 300,
        allow_unsigned: bool = False,
        setting: str = "AGENTMAIL_WEBHOOK_SECRET",
    ) -> None:
        if isinstance(secrets, str):
            # A bare string is a Sequence[str] too: its characters would become secrets.
            raise TypeError("secrets must be a list of strings, not one string")
        if tolerance_seconds < 0:
            raise ValueError("tolerance_seconds must not be negative")
        if not secrets and not allow_unsigned:
            raise SecretError(
                f"no webhook secret is configured: set {setting} to the endpoint's "
                "whsec_ signing secret, or [runner] webhook_secrets in plugins.toml"
            )
        for index, secret in enumerate(secrets):
            name = setting if len(secrets) == 1 else f"{setting} (entry {index + 1})"
            check_secret(secret, name)

        unique = list(dict.fromkeys(secrets))
        self._tolerance = tolerance_seconds
        self._allow_unsigned = allow_unsigned
        self._svix_keys = tuple(
            _SvixKey(SvixWebhook(s), StandardWebhook(s))
            for s in unique
            if s.startswith(_WHSEC_PREFIX)
        )
        # Keyed once; copy() per request skips re-deriving the padded keys. whsec_
        # values are included as literal strings because that is how a sender using
        # this scheme would have keyed them.
        self._plain_macs = tuple(
            hmac.new(s.encode(), digestmod=hashlib.sha256) for s in unique
        )
        # Above the library's own limit, verify() would refuse what we mean to accept,
        # so the signature is computed with the library and compared here instead.
        self._library_verifies = tolerance_seconds <= _LIBRARY_TOLERANCE

    def verify(self, body: bytes, headers: HeaderItems) -> Verified:
        """Return what was verified, or raise :class:`VerificationError`.

        ``body`` must be the raw request body exactly as received; ``headers`` may be
        any mapping (werkzeug ``Headers`` included) with names in any case.
        """
        found: dict[str, str] = {}
        for name, value in headers.items():
            key = name.lower()
            # First wins, as with werkzeug's Headers.get(), if a name is repeated.
            if key in _WANTED_NAMES and key not in found:
                found[key] = value
        if not _SVIX_NAMES.isdisjoint(found):
            return self._verify_svix(body, found)
        if _AGENTMAIL_SIGNATURE in found:
            return self._verify_hmac(body, found[_AGENTMAIL_SIGNATURE])
        if self._allow_unsigned:
            return _UNSIGNED
        raise VerificationError("no signature headers")

    def sign(
        self, body: bytes, *, delivery_id: str, timestamp: int | None = None
    ) -> dict[str, str]:
        """Headers that make this Verifier accept ``body``, for tests and local tools.

        Svix headers with the first ``whsec_`` secret; without one,
        ``X-AgentMail-Signature`` with the first secret; without any secret (only
        possible with ``allow_unsigned``), no headers.
        """
        if self._svix_keys:
            if not delivery_id:
                raise ValueError("delivery_id must not be empty")
            seconds = int(time.time()) if timestamp is None else timestamp
            when = datetime.fromtimestamp(seconds, tz=UTC)
            signature = self._svix_keys[0].signer.sign(delivery_id, when, body)
            return {
                _SVIX_ID: delivery_id,
                _SVIX_TIMESTAMP: str(seconds),
                _SVIX_SIGNATURE: signature,
            }
        if self._plain_macs:
            mac = self._plain_macs[0].copy()
            mac.update(body)
            return {"X-AgentMail-Signature": f"sha256={mac.hexdigest()}"}
        return {}

    def _verify_svix(self, body: bytes, found: dict[str, str]) -> Verified:
        # Same precedence as the svix library: a svix- header beats its webhook- twin.
        msg_id = found.get(_SVIX_ID, found.get(_WEBHOOK_ID, ""))
        stamp = found.get(_SVIX_TIMESTAMP, found.get(_WEBHOOK_TIMESTAMP, ""))
        signature = found.get(_SVIX_SIGNATURE, found.get(_WEBHOOK_SIGNATURE, ""))
        if not (msg_id and stamp and signature):
            # Name the headers in the family the sender used.
            prefix = (
                "svix-" if any(n.startswith("svix-") for n in found) else "webhook-"
            )
            missing = [
                prefix + part
                for part, value in (
                    ("id", msg_id),
                    ("timestamp", stamp),
                    ("signature", signature),
                )
                if not value
            ]
            plural = "s" if len(missing) > 1 else ""
            raise VerificationError(f"missing {', '.join(missing)} header{plural}")
        if not self._svix_keys:
            raise VerificationError("svix signature but no whsec_ secret is configured")

        if not (
            len(stamp) <= _MAX_TIMESTAMP_DIGITS and stamp.isascii() and stamp.isdigit()
        ):
            raise VerificationError("bad timestamp")
        seconds = int(stamp)
        age = time.time() - seconds
        if age > self._tolerance:
            raise VerificationError("timestamp too old")
        if -age > self._tolerance:
            raise VerificationError("timestamp too new")
        if not signature.isascii():
            raise VerificationError("malformed signature header")

        library_headers = {
            _WEBHOOK_ID: msg_id,
            _WEBHOOK_TIMESTAMP: stamp,
            _WEBHOOK_SIGNATURE: signature,
        }
        reason = "no matching signature"
        for key in self._svix_keys:
            try:
                if self._library_verifies:
                    key.verifier.verify(body, library_headers)
                    matched = True
                else:
                    matched = _matches(key, body, msg_id, seconds, signature)
            except WebhookVerificationError as exc:
                reason = _library_reason(exc)
                continue
            except Exception:
                # A hostile request must never become a server error, whatever the
                # library trips over.
                reason = "malformed signature header"
                continue
            if matched:
                return Verified(scheme="svix", delivery_id=msg_id, timestamp=seconds)
        raise VerificationError(reason)

    def _verify_hmac(self, body: bytes, header: str) -> Verified:
        algorithm, sep, hex_digest = header.strip().partition("=")
        if (
            sep != "="
            or algorithm.lower() != "sha256"
            or len(hex_digest) != 2 * _SHA256_SIZE
            or not hex_digest.isascii()
        ):
            raise VerificationError(_MALFORMED_HMAC)
        try:
            digest = bytes.fromhex(hex_digest)
        except ValueError:
            raise VerificationError(_MALFORMED_HMAC) from None
        # fromhex() skips spaces, so 64 characters may still be fewer than 32 bytes.
        if len(digest) != _SHA256_SIZE:
            raise VerificationError(_MALFORMED_HMAC)
        for keyed in self._plain_macs:
            mac = keyed.copy()
            mac.update(body)
            if hmac.compare_digest(mac.digest(), digest):
                return _HMAC
        raise VerificationError("no matching signature")


def _matches(
    key: _SvixKey, body: bytes, msg_id: str, seconds: int, signature: str
) -> bool:
    """The library's signature check without its fixed five-minute window."""
    expected = key.signer.sign(msg_id, datetime.fromtimestamp(seconds, tz=UTC), body)
    return any(
        hmac.compare_digest(expected.encode(), item.encode())
        for item in signature.split(" ")
    )


def _library_reason(exc: WebhookVerificationError) -> str:
    # Our own checks run first, so the library only disagrees at the edge of the window
    # (its clock has moved on) or on the signature itself.
    message = str(exc).lower()
    if "too old" in message:
        return "timestamp too old"
    if "too new" in message:
        return "timestamp too new"
    return "no matching signature"
