"""PDF files written for the tests, byte by byte: well-formed ones and hostile ones.

Each document is raw PDF syntax with a cross-reference table whose offsets are counted
here, so a test knows exactly what the extractor is given. The encrypted documents go
through pypdf's writer, which encrypts an otherwise hand-written file.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Sequence
from functools import cache

HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def _escape(text: str) -> bytes:
    raw = text.encode("latin-1")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def text_operators(lines: Iterable[str]) -> bytes:
    """A content stream that shows each line in Helvetica, one under the other."""
    shown = b" T* ".join(b"(" + _escape(line) + b") Tj" for line in lines)
    return b"BT /F1 12 Tf 14 TL 72 720 Td " + shown + b" ET"


def stream(data: bytes, entries: bytes = b"") -> bytes:
    """A stream object: its dictionary (with the right /Length) and its bytes."""
    head = b"<< /Length %d %s>>" % (len(data), entries + b" " if entries else b"")
    return head + b"\nstream\n" + data + b"\nendstream"


class Document:
    """Objects numbered from 1, written out with a correct cross-reference table."""

    def __init__(self, header: bytes = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n") -> None:
        self.header = header
        self.objects: list[bytes] = []

    def add(self, body: bytes) -> int:
        self.objects.append(body)
        return len(self.objects)

    def reserve(self) -> int:
        """A number for an object whose body is set later with :meth:`put`."""
        return self.add(b"null")

    def put(self, number: int, body: bytes) -> None:
        self.objects[number - 1] = body

    def body(self) -> tuple[bytes, list[int]]:
        """The header and the objects, and the offset of each object."""
        out = bytearray(self.header)
        offsets = []
        for number, body in enumerate(self.objects, start=1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
        return bytes(out), offsets

    def build(self, trailer: bytes) -> bytes:
        """The whole file; ``trailer`` is the inside of the trailer dictionary."""
        out, offsets = self.body()
        return out + xref_section(offsets, trailer, start=len(out))


def xref_section(offsets: Sequence[int], trailer: bytes, *, start: int) -> bytes:
    """A classic xref table for objects 1..n, its trailer, and ``startxref``."""
    rows = [b"0000000000 65535 f \n"]
    rows += [b"%010d 00000 n \n" % offset for offset in offsets]
    table = b"xref\n0 %d\n" % (len(offsets) + 1) + b"".join(rows)
    size = b"/Size %d " % (len(offsets) + 1)
    return (
        table
        + b"trailer\n<< "
        + size
        + trailer
        + b" >>\nstartxref\n%d\n%%%%EOF\n" % start
    )


def _pages_document(contents: Sequence[bytes], *, with_font: bool = True) -> Document:
    doc = Document()
    catalog = doc.reserve()
    pages = doc.reserve()
    font = doc.add(HELVETICA)
    kids = []
    for content in contents:
        content_ref = doc.add(content)
        resources = b"<< /Font << /F1 %d 0 R >> >>" % font if with_font else b"<< >>"
        kids.append(
            doc.add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] "
                b"/Resources %s /Contents %d 0 R >>" % (pages, resources, content_ref)
            )
        )
    refs = b" ".join(b"%d 0 R" % kid for kid in kids)
    doc.put(pages, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (refs, len(kids)))
    doc.put(catalog, b"<< /Type /Catalog /Pages %d 0 R >>" % pages)
    return doc


def text_pdf(pages: Sequence[Sequence[str]]) -> bytes:
    """A PDF with one page per entry, each showing its lines as real text."""
    contents = [stream(text_operators(lines)) for lines in pages]
    return _pages_document(contents).build(b"/Root 1 0 R")


def compressed_text_pdf(pages: Sequence[Sequence[str]]) -> bytes:
    """Like :func:`text_pdf`, with Flate-compressed content streams."""
    contents = [
        stream(zlib.compress(text_operators(lines)), b"/Filter /FlateDecode")
        for lines in pages
    ]
    return _pages_document(contents).build(b"/Root 1 0 R")


def drawing_pdf() -> bytes:
    """A page with a filled rectangle and no text at all, like a scan."""
    content = stream(b"0.2 0.4 0.8 rg 72 72 468 648 re f")
    return _pages_document([content], with_font=False).build(b"/Root 1 0 R")


def encrypted_pdf(lines: Sequence[str], *, user_password: str) -> bytes:
    """A one-page text PDF encrypted with RC4-128 (no extra library needed)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf([lines]))))
    writer.encrypt(
        user_password=user_password,
        owner_password="owner-secret",
        algorithm="RC4-128",
    )
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _deflate_zeros(mebibytes: int) -> bytes:
    """A zlib stream of ``mebibytes`` MiB of zeros, made without compressing them all.

    After a full flush the compressor forgets what came before, so every further
    mebibyte of zeros comes out as the same bytes: those are repeated, and the
    checksum of all the zeros (Adler-32: ``a`` stays 1, ``b`` counts the bytes) is
    written at the end.
    """
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert again == repeated, "the compressor no longer repeats itself"
    final_block = compressor.flush()[:-4]
    checksum = ((mebibytes << 20) % 65521) << 16 | 1
    body = first + repeated * (mebibytes - 1) + final_block
    return body + checksum.to_bytes(4, "big")


@cache
def flate_bomb_pdf(inflated_mib: int = 400) -> bytes:
    """A page whose content stream is Flate inside Flate, inflating to ``inflated_mib``.

    The outer layer turns a few kilobytes into a few hundred; the inner one turns those
    into hundreds of megabytes of zeros.
    """
    inner = _deflate_zeros(inflated_mib)
    outer = zlib.compress(inner, 9)
    content = stream(outer, b"/Filter [/FlateDecode /FlateDecode]")
    return _pages_document([content]).build(b"/Root 1 0 R")


@cache
def text_operator_bomb_pdf(inflated_mib: int = 60) -> bytes:
    """A page whose (compressed) content stream is ``inflated_mib`` of tiny show-text
    operators: small on the wire, costly in time and memory to interpret."""
    operator = b"(x) Tj "
    count = (inflated_mib << 20) // len(operator)
    content = b"BT /F1 12 Tf 72 720 Td " + operator * count + b"ET"
    compressed = stream(zlib.compress(content, 9), b"/Filter /FlateDecode")
    return _pages_document([compressed]).build(b"/Root 1 0 R")


def prev_loop_pdf() -> bytes:
    """Two cross-reference sections whose trailers' ``/Prev`` name each other."""
    doc = _pages_document([stream(text_operators(["Looping xref"]))])
    out, offsets = doc.body()
    first_start = len(out)
    # Both sections have the same length, so the second one's offset is known first.
    probe = xref_section(offsets, b"/Root 1 0 R /Prev %010d" % 0, start=first_start)
    second_start = first_start + len(probe)
    first = xref_section(
        offsets, b"/Root 1 0 R /Prev %010d" % second_start, start=first_start
    )
    second = xref_section(
        offsets, b"/Root 1 0 R /Prev %010d" % first_start, start=second_start
    )
    assert len(first) == len(probe)
    return out + first + second


def rootless_pdf() -> bytes:
    """A text PDF whose trailer has no ``/Root`` and no object says it is a catalog."""
    doc = Document()
    pages = doc.reserve()
    font = doc.add(HELVETICA)
    content = doc.add(stream(text_operators(["Nobody can find me"])))
    page = doc.add(
        b"<< /Type /Page /Parent 1 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font, content)
    )
    doc.put(pages, b"<< /Type /Pages /Kids [%d 0 R] /Count 1 >>" % page)
    return doc.build(b"/Info << /Title (no root) >>")


def bare_percent_pdf() -> bytes:
    """A page whose content stream ends in a lone ``%`` (a comment with no end)."""
    content = text_operators(["Before the comment"]) + b"\n%"
    return _pages_document([stream(content)]).build(b"/Root 1 0 R")


def truncated_pdf() -> bytes:
    """A text PDF cut off in the middle of its first object."""
    return text_pdf([["Cut short"]])[:40]
