"""What a file is, read from its first bytes, never from its name.

A radiograph archive holds JPEGs without an extension, DICOM files named ``.jpg``, DICOM
datasets written without the 128-byte preamble, GIFs, PDFs and empty files. Every stage that
reads images asks :func:`file_kind` first and then uses the reader for that content.
"""

from __future__ import annotations

from pathlib import Path

RASTER_KINDS = ("png", "jpeg", "tiff", "gif", "bmp")
SIGNATURES = (  # (offset, bytes, kind)
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"II+\x00", "tiff"),  # BigTIFF
    (0, b"MM\x00+", "tiff"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
)
OTHER_SIGNATURES = (  # not images: named in the detail of ``not an image file``
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"RIFF", "a RIFF container (WebP, WAV, AVI)"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 file (not DICOM-wrapped)"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream (not DICOM-wrapped)"),
)
HEAD_BYTES = 512
BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}  # the BMP info header's own length
DICOM_GROUPS = {0x0002, 0x0008}  # the first group of a dataset without preamble


def _is_bmp(head: bytes) -> bool:
    return (len(head) >= 18 and head[:2] == b"BM"
            and int.from_bytes(head[14:18], "little") in BMP_HEADER_SIZES)


def _is_dicom_without_preamble(head: bytes) -> bool:
    """A dataset that starts at its first element: group 0002 or 0008 (little endian), element
    number small, then an explicit VR of two capital letters or an implicit 32-bit length that
    fits in the file's first bytes' world (< 1 MiB)."""
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    if group not in DICOM_GROUPS or element > 0x0100:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return int.from_bytes(head[4:8], "little") < 1 << 20


def file_kind(path: str | Path) -> str:
    """``dicom``, ``png``, ``jpeg``, ``tiff``, ``gif``, ``bmp``, ``empty`` or ``unknown``.
    OSError when the file cannot be opened."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if not head:
        return "empty"
    if head[128:132] == b"DICM":
        return "dicom"
    for offset, signature, kind in SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return kind
    if _is_bmp(head):
        return "bmp"
    if _is_dicom_without_preamble(head):
        return "dicom"
    return "unknown"


def describe_unknown(path: str | Path) -> str:
    """The detail of a ``not an image file``: what the content looks like instead."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    for signature, what in OTHER_SIGNATURES:
        if head.startswith(signature):
            return f"the content is {what}"
    try:
        text = head.decode("utf-8")
        if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
            return f"the content is text ({text[:24]!r}…)"
    except UnicodeDecodeError:
        pass
    return (f"the content is neither DICOM nor PNG, JPEG, TIFF, GIF or BMP (first bytes "
            f"{head[:8].hex(' ')})")
