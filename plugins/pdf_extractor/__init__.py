"""PDF extractor: the text of a message's PDF attachments, for later stages.

In the ``enrich`` stage, each attachment that is a PDF (by content type, file name or
``%PDF-`` header) is fetched through the AgentMail API, within a size limit, and read
by pypdf in a child process with its own time and memory limits (see ``sandbox``).
The outcome of every attachment goes on the context as ``attachment_texts`` and the
text of all of them as ``pdf_text``, where the router and the auto-responder of the
same event find it. A file that is encrypted, scanned, broken or hostile gets a status
saying so; it never costs the message's other attachments, nor the other plugins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import Field

from runner import (
    Attachment,
    Context,
    DownloadTooLarge,
    Event,
    Message,
    PluginConfig,
    Reply,
    hookimpl,
)

from .extract import HEADER_WINDOW
from .sandbox import Extraction, Limits, extract_text

__all__ = ["AttachmentText", "PdfExtractorConfig", "pdf_text"]

PDF_CONTENT_TYPES = frozenset(
    {"application/pdf", "application/x-pdf", "application/acrobat", "text/pdf"}
)

# Types that say nothing about the content: such an attachment is downloaded and
# recognised by its header instead.
GENERIC_CONTENT_TYPES = (
    "",
    "application/octet-stream",
    "binary/octet-stream",
    "application/unknown",
    "application/download",
    "application/x-download",
    "application/force-download",
)


# A file name heads its text in ``pdf_text``; a hostile one must not fill it.
_NAME_CHARS = 200


class PdfExtractorConfig(PluginConfig):
    """The ``[plugins.pdf_extractor]`` table."""

    max_bytes: int = Field(
        default=10 * 1024 * 1024,
        gt=0,
        description="Largest attachment fetched; bigger ones are refused unread.",
    )
    max_pages: int = Field(default=50, ge=1, description="Pages read per PDF.")
    extract_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="Wall-clock time allowed per PDF."
    )
    memory_mb: int = Field(
        default=256, ge=64, description="Address space of the process reading a PDF."
    )
    max_text_chars: int = Field(default=20_000, ge=1, description="Text kept per PDF.")
    max_total_chars: int = Field(
        default=50_000, ge=1, description="Text kept for all PDFs of one message."
    )
    max_attachments: int = Field(
        default=5, ge=1, description="Attachments fetched per message."
    )
    include_inline: bool = Field(
        default=False, description="Also read inline attachments."
    )
    sniff_content_types: tuple[str, ...] = Field(
        default=GENERIC_CONTENT_TYPES,
        description="Content types downloaded to look for a PDF header.",
    )
    reply_with_text: bool = Field(
        default=False, description="Reply to the sender with the extracted text."
    )
    reply_max_chars: int = Field(
        default=4_000, ge=1, description="Longest text quoted in that reply."
    )


@dataclass(frozen=True)
class AttachmentText:
    """What became of one attachment; ``as_dict`` is its form on the context."""

    attachment_id: str
    filename: str
    status: str
    pages: int = 0
    text: str = ""
    detail: str = ""

    @classmethod
    def of(
        cls, attachment: Attachment, status: str, detail: str = ""
    ) -> AttachmentText:
        return cls(attachment.attachment_id, attachment.filename, status, detail=detail)

    @property
    def name(self) -> str:
        return self.filename or self.attachment_id

    def as_dict(self) -> dict[str, Any]:
        return {
            "attachment_id": self.attachment_id,
            "filename": self.filename,
            "status": self.status,
            "pages": self.pages,
            "text": self.text,
            "detail": self.detail,
        }


Kind = Literal["pdf", "maybe", "other"]


def kind_of(attachment: Attachment, config: PdfExtractorConfig) -> Kind:
    """Whether an attachment says it is a PDF, might be one, or is something else."""
    content_type = attachment.content_type.partition(";")[0].strip().lower()
    if content_type in PDF_CONTENT_TYPES:
        return "pdf"
    if attachment.filename.lower().endswith(".pdf"):
        return "pdf"
    if content_type in {t.lower() for t in config.sniff_content_types}:
        return "maybe"
    return "other"


def looks_like_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:HEADER_WINDOW]


class _Reader:
    """Reads the attachments of one message, one at a time, within the limits."""

    def __init__(
        self, message: Message, context: Context, config: PdfExtractorConfig
    ) -> None:
        self.message = message
        self.context = context
        self.config = config
        self.fetched = 0

    def read_all(self) -> Iterator[AttachmentText]:
        for attachment in self.message.attachments:
            result = self.read(attachment)
            self.context.log.info(
                "attachment %s: %s%s",
                attachment.attachment_id,
                result.status,
                f" ({result.detail})" if result.detail else "",
            )
            yield result

    def read(self, attachment: Attachment) -> AttachmentText:
        config = self.config
        if attachment.inline and not config.include_inline:
            return AttachmentText.of(attachment, "skipped", "inline attachment")
        kind = kind_of(attachment, config)
        if kind == "other":
            return AttachmentText.of(
                attachment, "not_pdf", f"content type {attachment.content_type!r}"
            )
        if attachment.size is not None and attachment.size > config.max_bytes:
            return _too_large(attachment, f"{attachment.size} bytes", config)
        if self.fetched >= config.max_attachments:
            return AttachmentText.of(
                attachment,
                "skipped",
                f"only the first {config.max_attachments} attachments are read",
            )
        if not attachment.attachment_id:
            return AttachmentText.of(attachment, "unavailable", "no attachment_id")
        self.fetched += 1
        fetched = self.fetch(attachment)
        if isinstance(fetched, AttachmentText):
            return fetched
        if not looks_like_pdf(fetched):
            return AttachmentText.of(attachment, "not_pdf", "no %PDF- header")
        return self.extract(attachment, fetched)

    def fetch(self, attachment: Attachment) -> bytes | AttachmentText:
        """The attachment's bytes, or why they could not be had."""
        api, config = self.context.api, self.config
        if not api.available:
            return AttachmentText.of(
                attachment, "unavailable", "no AgentMail API key is configured"
            )
        try:
            found = api.attachment(self.message.message_id, attachment.attachment_id)
        except Exception as exc:  # API and network errors of every kind
            return self.unavailable(attachment, f"{type(exc).__name__}: {exc}")
        size = getattr(found, "size", None)
        if isinstance(size, int) and size > config.max_bytes:
            return _too_large(attachment, f"{size} bytes", config)
        try:
            return api.download(found.download_url, max_bytes=config.max_bytes)
        except DownloadTooLarge as exc:
            return _too_large(attachment, str(exc), config)
        except Exception as exc:  # the error would quote the signed download URL
            return self.unavailable(attachment, f"download failed: {_cause(exc)}")

    def unavailable(self, attachment: Attachment, reason: str) -> AttachmentText:
        self.context.log.warning(
            "attachment %s could not be fetched: %s", attachment.attachment_id, reason
        )
        return AttachmentText.of(attachment, "unavailable", reason)

    def extract(self, attachment: Attachment, data: bytes) -> AttachmentText:
        config = self.config
        limits = Limits(
            timeout_seconds=config.extract_timeout_seconds,
            memory_mb=config.memory_mb,
            max_pages=config.max_pages,
            max_chars=config.max_text_chars,
        )
        extraction = extract_text(data, limits)
        self.context.log.debug(
            "attachment %s read in %.2f s, peak %d KiB",
            attachment.attachment_id,
            extraction.seconds,
            extraction.peak_rss_kib,
        )
        return _from_extraction(attachment, extraction)


def _cause(exc: Exception) -> str:
    """The status code of a failed download, else the kind of error."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return f"HTTP {status}" if isinstance(status, int) else type(exc).__name__


def _too_large(
    attachment: Attachment, found: str, config: PdfExtractorConfig
) -> AttachmentText:
    detail = f"{found}, over max_bytes = {config.max_bytes}"
    return AttachmentText.of(attachment, "too_large", detail)


def _from_extraction(attachment: Attachment, extraction: Extraction) -> AttachmentText:
    return AttachmentText(
        attachment_id=attachment.attachment_id,
        filename=attachment.filename,
        status=extraction.status,
        pages=extraction.pages,
        text=extraction.text,
        detail=extraction.detail,
    )


def share_budget(results: list[AttachmentText], total: int) -> list[AttachmentText]:
    """Cut the texts, in order, so that together they hold at most ``total`` chars."""
    shared = []
    for result in results:
        text = result.text[: max(total, 0)]
        total -= len(text)
        shared.append(replace(result, text=text))
    return shared


def pdf_text(results: list[AttachmentText]) -> str:
    """Every text, each under a line naming its file."""
    sections = [f"--- {r.name[:_NAME_CHARS]} ---\n{r.text}" for r in results if r.text]
    return "\n\n".join(sections)


def _reply(text: str, config: PdfExtractorConfig) -> Reply:
    if len(text) > config.reply_max_chars:
        text = text[: config.reply_max_chars] + "\n[...]"
    return Reply(text=f"The text found in your PDF attachments:\n\n{text}")


@hookimpl
def subscriptions() -> list[str]:
    return ["message.received"]


@hookimpl
def config_schema() -> type[PdfExtractorConfig]:
    return PdfExtractorConfig


@hookimpl
def enrich(event: Event, context: Context) -> list[Reply]:
    config: PdfExtractorConfig = context.config or PdfExtractorConfig()
    message = event.message
    if message is None or not message.attachments:
        return []
    results = list(_Reader(message, context, config).read_all())
    results = share_budget(results, config.max_total_chars)
    text = pdf_text(results)
    context.put("attachment_texts", [r.as_dict() for r in results])
    context.put("pdf_text", text)
    if config.reply_with_text and text:
        return [_reply(text, config)]
    return []
