"""Reading the Dockerfile and .dockerignore the way an engine would, for the engine-less tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    """One FROM and the instructions after it, continuation lines joined."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        return self.all(keyword)[-1]

    def exec_form(self, keyword: str) -> list[str]:
        value: list[str] = json.loads(self.last(keyword))
        return value


def stages(text: str | None = None) -> list[Stage]:
    """The Dockerfile's build stages, with global ARG defaults substituted into FROM."""
    text = DOCKERFILE.read_text() if text is None else text
    joined = re.sub(r"\\\n", " ", text)
    lines = [ln.strip() for ln in joined.splitlines()]
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            image, _, name = re.sub(r"\s+AS\s+", " AS ", args, flags=re.I).partition(" AS ")
            for arg, default in global_args.items():
                image = image.replace("${" + arg + "}", default)
            result.append(Stage(image.strip(), name.strip() or None))
        elif not result and keyword == "ARG":
            arg, _, default = args.partition("=")
            global_args[arg] = default
        elif result:
            result[-1].instructions.append((keyword, args))
    return result


def arg_default(stage: Stage, name: str) -> str:
    (value,) = [a.partition("=")[2] for a in stage.all("ARG") if a.partition("=")[0] == name]
    return value.strip('"')


def _pattern(text: str) -> re.Pattern[str]:
    regex = ""
    for part in re.split(r"(\*\*/?|\*|\?)", text.strip("/")):
        if part.startswith("**"):
            regex += "(?:.*/)?" if part.endswith("/") else ".*"
        elif part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        else:
            regex += re.escape(part)
    return re.compile(regex + r"\Z")


def context_files() -> list[str]:
    """The repository's files an engine would send as build context (.dockerignore applied).

    As the engine does: a path is excluded when the last pattern matching it, or one of its
    parent directories, excludes it; `!` patterns re-include. Candidates are the files of a
    fresh clone (tracked, or new and not git-ignored).
    """
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _pattern(line.lstrip("!"))))
    git = shutil.which("git")
    assert git
    listed = subprocess.run(
        [git, "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.split()  # fmt: skip
    kept = []
    for path in listed:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for negated, pattern in rules:
            if any(pattern.match(p) for p in prefixes):
                excluded = not negated
        if not excluded and (ROOT / path).is_file():
            kept.append(path)
    return sorted(kept)
