"""The fenced blocks of README.md and docs/*.md, for the tests that run or check them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = ("README.md", *(f"docs/{page.name}" for page in sorted(DOCS.glob("*.md"))))

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    page: str
    lang: str
    text: str
    line: int

    def commands(self) -> list[str]:
        """The lines typed at the prompt, without the prompt."""
        return [line[2:] for line in self.text.splitlines() if line.startswith("$ ")]


def page_text(page: str) -> str:
    return (ROOT / page).read_text(encoding="utf-8")


def blocks(page: str | None = None) -> list[Block]:
    """Every fenced block of one page, or of all of them."""
    found = []
    for name in PAGES if page is None else (page,):
        text = page_text(name)
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(name, match[1], match[2], line))
    return found


def block(page: str, lang: str, containing: str) -> Block:
    """The one `lang` block of `page` that contains `containing`."""
    matching = [b for b in blocks(page) if b.lang == lang and containing in b.text]
    assert len(matching) == 1, f"{page}: {len(matching)} {lang} blocks contain {containing!r}"
    return matching[0]
