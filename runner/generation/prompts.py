"""Prompts over a table: a `str.format` template over the row's columns, or a function.

A template is checked against the input's columns before anything is sent, so a typo in a
column name costs nothing. A row the prompt cannot be built for (a null in a column the
template uses, a function that raises or returns the wrong thing) fails alone, with its row
number and the column or the exception in the message; the other rows go on.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import UsageError

__all__ = ["PromptBuilder", "RowProblem"]

Messages = list[dict[str, Any]]
_FIELD_BASE = re.compile(r"[.\[]")


class RowProblem(Exception):
    """One row's prompt could not be built; `field` names the column when one is to blame."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def template_columns(template: str) -> list[str]:
    """The column names a template uses, in order; positional fields are refused."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(f"the prompt template is malformed: {exc}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = _FIELD_BASE.split(field, maxsplit=1)[0]
        if not base or base.isdigit():
            raise UsageError(
                f"the prompt template has a positional field {{{field}}}: name a column, "
                "e.g. {question}; write {{ and }} for literal braces"
            )
        if base not in names:
            names.append(base)
    return names


class PromptBuilder:
    """Builds each row's messages: the system text, the schema instruction, the prompt."""

    def __init__(
        self,
        prompt: str | Callable[[dict[str, Any]], Any],
        columns: Sequence[str],
        *,
        system: str | None = None,
        instruction: str | None = None,
    ) -> None:
        self._template: str | None = None
        self._fn: Callable[[dict[str, Any]], Any] | None = None
        if isinstance(prompt, str):
            used = template_columns(prompt)
            missing = [c for c in used if c not in columns]
            if missing:
                have = ", ".join(columns) or "(none)"
                raise UsageError(
                    f"the prompt template uses column {missing[0]!r}, which the input does not "
                    f"have; its columns: {have}"
                )
            self._template = prompt
            self._used = used
        elif callable(prompt):
            self._fn = prompt
        else:
            raise UsageError(
                "prompt must be a str.format template or a function row -> str | messages, "
                f"got {type(prompt).__name__}"
            )
        head = "\n\n".join(t for t in (system, instruction) if t)
        self._system = head or None
        self._instruction = instruction

    def messages(self, row: dict[str, Any]) -> Messages:
        """The row's messages; raises RowProblem when they cannot be built."""
        if self._template is not None:
            for name in self._used:
                if row.get(name) is None:
                    raise RowProblem(
                        f"column {name!r} is empty (null) and the prompt uses it", name
                    )
            try:
                text = self._template.format_map(row)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                raise RowProblem(f"the prompt template cannot be filled: {exc}") from None
            return self._with_system([{"role": "user", "content": text}])
        assert self._fn is not None
        try:
            made = self._fn(row)
        except Exception as exc:
            raise RowProblem(f"the prompt function raised {type(exc).__name__}: {exc}") from None
        if isinstance(made, str):
            return self._with_system([{"role": "user", "content": made}])
        if isinstance(made, list) and made and all(_is_message(m) for m in made):
            return self._merge_system([dict(m) for m in made])
        raise RowProblem(
            "the prompt function must return a str or a non-empty list of messages "
            f"({{'role': ..., 'content': ...}}), got {_describe(made)}"
        )

    def _with_system(self, messages: Messages) -> Messages:
        if self._system is None:
            return messages
        return [{"role": "system", "content": self._system}, *messages]

    def _merge_system(self, messages: Messages) -> Messages:
        """A function's own system message is kept; the schema instruction joins it."""
        if messages[0].get("role") != "system":
            return self._with_system(messages)
        if self._instruction:
            first = messages[0]
            first["content"] = f"{first.get('content') or ''}\n\n{self._instruction}".strip()
        return messages


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"
