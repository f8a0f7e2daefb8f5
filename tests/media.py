"""Small valid media files made in the test, each with its own bytes per seed (no downloads)."""

from __future__ import annotations

import io
import struct
import wave
import zlib

__all__ = ["PDF", "jpeg", "mp3", "pdf", "png", "wav", "webp"]


def png(seed: int, size: int = 8) -> bytes:
    """A valid PNG whose pixels depend on `seed`, so every file has its own sha256."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(
        b"\x00" + bytes((seed + x + y) % 256 for x in range(size * 3)) for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg(seed: int) -> bytes:
    """A JPEG's markers: SOI, a JFIF APP0 segment, a comment carrying `seed`, EOI."""
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    note = f"seed {seed}".encode()
    return (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", len(app0) + 2)
        + app0
        + b"\xff\xfe"
        + struct.pack(">H", len(note) + 2)
        + note
        + b"\xff\xd9"
    )


def webp(seed: int) -> bytes:
    """A RIFF/WEBP container holding one lossless (VP8L) chunk of `seed`'s bytes."""
    data = b"\x2f" + struct.pack("<I", seed) + bytes(7)
    chunk = b"VP8L" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def wav(seed: int, seconds: float = 0.25, rate: int = 8000) -> bytes:
    """Mono 8-bit PCM from the standard library's `wave`, samples depending on `seed`."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(
            bytes((seed * 7 + i * 13 + (i >> 7)) % 256 for i in range(int(rate * seconds)))
        )
    return buf.getvalue()


# One MPEG-1 Layer III frame header: 128 kbit/s, 44.1 kHz, no padding (417-byte frames).
_FRAME = b"\xff\xfb\x90\x00"


def mp3(seed: int, frames: int = 4, id3: bool = True) -> bytes:
    """An mp3's frames (silent payloads marked with `seed`), with or without an ID3 tag."""
    body = b"".join(_FRAME + bytes([seed % 256]) + bytes(412) for _ in range(frames))
    tag = b"ID3\x03\x00\x00\x00\x00\x00\x00" if id3 else b""
    return tag + body


PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def pdf(seed: int) -> bytes:
    """The one-page PDF above with a comment line that makes its bytes `seed`'s own."""
    return PDF.replace(b"trailer", f"% seed {seed}\ntrailer".encode())
