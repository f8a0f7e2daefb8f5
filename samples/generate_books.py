"""Dataset generation from Python: a prompt function, a pydantic model, typed columns back.

Run `python samples/generate_books.py` (needs pydantic). It uses the embedded simulator
(provider "sim"), so it needs no key and no network; for the real platform, set ZAI_API_KEY
and drop `provider="sim"`. Run it twice: the second call sends nothing (the job's checkpoint),
and a new `out` with the same requests is answered from the response cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import runner

HERE = Path(__file__).resolve().parent


class Book(BaseModel):
    title: str
    author: str
    year: int
    pages: int = Field(ge=1)
    tags: list[str]


def prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You recommend books. Be concise."},
        {"role": "user", "content": f"One book about {row['topic']} for {row['audience']}."},
    ]


if __name__ == "__main__":
    table = runner.generate(
        HERE / "books.parquet",
        prompt=prompt,
        model="glm-4.5-air",
        response_format=Book,
        out=Path("runs") / "books-py",
        provider="sim",
        progress=False,
    )
    print(table.select(["topic", "title", "year", "pages", "status", "cached", "cost"]))
