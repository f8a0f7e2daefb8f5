"""``runner validate``: read the whole spec and count what a run would send."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .reader import MAX_LINE_BYTES, read_spec
from .rows import InvalidRow, Request, SpecDefaults

__all__ = ["ValidationReport", "validate_spec"]

MAX_STORED_ERRORS = 1000
_NO_DEFAULTS = SpecDefaults()


@dataclass
class ValidationReport:
    """What ``runner validate`` prints: counts, the first errors, and where the valid rows go."""

    total: int = 0
    valid: int = 0
    errors: list[InvalidRow] = field(default_factory=list)  # the first MAX_STORED_ERRORS only
    invalid: int = 0  # every invalid row, stored or not
    by_endpoint: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        out = [str(err) for err in self.errors]
        if self.invalid > len(self.errors):
            out.append(f"... and {self.invalid - len(self.errors):,} more invalid rows not shown")
        summary = f"{self.total:,} rows: {self.valid:,} valid, {self.invalid:,} invalid"
        for name, counts in (("endpoints", self.by_endpoint), ("models", self.by_model)):
            if counts:
                summary += f"; {name}: " + ", ".join(
                    f"{k} {v:,}" for k, v in sorted(counts.items())
                )
        out.append(summary)
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "valid": self.valid,
            "invalid": self.invalid,
            "errors": [asdict(err) for err in self.errors],
            "errors_truncated": self.invalid > len(self.errors),
            "by_endpoint": dict(self.by_endpoint),
            "by_model": dict(self.by_model),
        }


def validate_spec(
    path: Path,
    defaults: SpecDefaults = _NO_DEFAULTS,
    fmt: str | None = None,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> ValidationReport:
    """Read the whole spec and count what a run would send, without sending anything."""
    report = ValidationReport()
    for batch in read_spec(path, defaults, fmt=fmt, max_line_bytes=max_line_bytes):
        for item in batch:
            report.total += 1
            if isinstance(item, Request):
                report.valid += 1
                report.by_endpoint[item.endpoint] = report.by_endpoint.get(item.endpoint, 0) + 1
                if item.model:
                    report.by_model[item.model] = report.by_model.get(item.model, 0) + 1
            else:
                report.invalid += 1
                if len(report.errors) < MAX_STORED_ERRORS:
                    report.errors.append(item)
    return report
