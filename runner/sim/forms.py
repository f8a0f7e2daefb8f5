"""multipart/form-data bodies as the platform reads them, parsed by python-multipart.

The file uploads (``POST files``) and speech to text (``POST audio/transcriptions``) take
forms. A real parser (the one Starlette and FastAPI use), not a split on the boundary, so
the runner's own encoder (http/base.py) is checked against an implementation it shares
nothing with: quoting, line breaks inside a file and a boundary-like line in the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from runner.sim.errors import ApiError

__all__ = ["Part", "read_form"]


@dataclass(slots=True)
class Part:
    """One form field: its name, a filename for a file, its Content-Type, its bytes."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(slots=True)
class _Reader:
    parts: list[Part] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: bytes = b""
    value: bytes = b""

    def on_part_begin(self) -> None:
        self.chunks, self.headers = [], {}

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.chunks.append(data[start:end])

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.name.lower()] = self.value
        self.name = self.value = b""

    def on_part_end(self) -> None:
        _, disposition = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = disposition.get(b"name")
        if name is None:
            raise ApiError(1210, "a form part has no name")
        filename = disposition.get(b"filename")
        kind = self.headers.get(b"content-type")
        self.parts.append(
            Part(
                name.decode(),
                None if filename is None else filename.decode(),
                None if kind is None else kind.decode("latin-1"),
                b"".join(self.chunks),
            )
        )


def read_form(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/form-data body, in order; ApiError 1210 when it is none."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ApiError(1210, "expected a multipart/form-data body with a boundary")
    reader = _Reader()
    callbacks = {
        name: getattr(reader, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
        )
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(1210, f"malformed multipart/form-data body: {exc}") from None
    except UnicodeDecodeError:
        raise ApiError(1210, "a form part's name is not UTF-8") from None
    return reader.parts
