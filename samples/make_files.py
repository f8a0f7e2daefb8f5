"""Write the small local files `files.jsonl` names (standard library only, no downloads).

    python samples/make_files.py

media/gradient.png, media/checks.png, media/stripes.png  64x64 RGB images
media/invoice.pdf                                        a one-page PDF with a line of text
media/tone.wav                                           one second of a 440 Hz tone

The files are committed; the script says how they were made and makes them again.
"""

from __future__ import annotations

import io
import math
import struct
import wave
import zlib
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent / "media"
SIZE = 64

Pixel = Callable[[int, int], tuple[int, int, int]]


def png(pixel: Pixel) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(SIZE)) for y in range(SIZE)
    )
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def pdf(text: str) -> bytes:
    """One A6 page with one line of Helvetica, and a correct cross-reference table."""
    stream = f"BT /F1 18 Tf 24 300 Td ({text}) Tj ET".encode()
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 298 420]"
        b"/Resources<</Font<</F1 4 0 R>>>>/Contents 5 0 R>>",
        b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>",
        b"<</Length %d>>stream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<</Size %d/Root 1 0 R>>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def tone(seconds: float = 1.0, rate: int = 8000, hz: float = 440.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / rate)))
                for i in range(int(rate * seconds))
            )
        )
    return buf.getvalue()


def main() -> None:
    HERE.mkdir(exist_ok=True)
    files = {
        "gradient.png": png(lambda x, y: (x * 4, y * 4, 128)),
        "checks.png": png(lambda x, y: (255, 255, 255) if (x // 8 + y // 8) % 2 else (20, 20, 20)),
        "stripes.png": png(lambda x, y: (200, 40, 40) if (x // 4) % 2 else (240, 220, 40)),
        "invoice.pdf": pdf("Invoice 2026-117: 3 x widgets, 42.00 EUR"),
        "tone.wav": tone(),
    }
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"media/{name}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
