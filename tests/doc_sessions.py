"""Runs a console block of the docs as a reader would type it, and shows what it printed.

Each `$ ` line runs in bash in one directory; `export NAME=value` sets the session's
environment; a line ending in `&` starts a background process, stopped (its process group)
when the session closes. `replace` turns the shown text into what may run here (loopback,
free ports, a temporary directory), applied to commands only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .doc_blocks import Block

VENV_BIN = str(Path(sys.executable).parent)


@dataclass(frozen=True)
class Step:
    command: str
    shown: str  # the output under the command in the docs


def steps(block: Block) -> list[Step]:
    found: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            found.append((line[2:], []))
        else:
            assert found, f"{block.page}:{block.line}: output before the first command"
            found[-1][1].append(line)
    return [Step(command, "\n".join(out)) for command, out in found]


@dataclass
class Session:
    cwd: Path
    replace: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **self.env}

    def command(self, shown: str) -> str:
        for old, new in self.replace.items():
            shown = shown.replace(old, new)
        return shown

    def run(self, shown: str, timeout: float = 60) -> str:
        """Runs one command; its output (stdout and stderr), or "" for a background one."""
        command = self.command(shown)
        if match := re.fullmatch(r"export (\w+)=(\S+)", command):
            self.env[match[1]] = match[2]
            return ""
        if command.endswith(" &"):
            with (self.cwd / f"background-{len(self.background)}.log").open("wb") as log:
                self.background.append(
                    subprocess.Popen(
                        ["bash", "-c", command.removesuffix(" &")],
                        cwd=self.cwd,
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            return ""
        done = subprocess.run(
            ["bash", "-c", command], cwd=self.cwd, env=self.env, timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        return done.stdout.rstrip("\n")

    def background_output(self) -> str:
        return "".join(
            (self.cwd / f"background-{i}.log").read_text(errors="replace")
            for i in range(len(self.background))
        )

    def close(self) -> None:
        for process in reversed(self.background):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)


@contextmanager
def session(cwd: Path, replace: dict[str, str] | None = None) -> Iterator[Session]:
    running = Session(cwd, dict(replace or {}))
    try:
        yield running
    finally:
        running.close()


def normalised(text: str, volatile: list[tuple[str, str]]) -> str:
    """`text` with each volatile part (a regex) replaced, so shown and real output compare."""
    for pattern, placeholder in volatile:
        text = re.sub(pattern, placeholder, text, flags=re.M)
    return text


def run_block(
    running: Session,
    block: Block,
    volatile: list[tuple[str, str]],
    after: Callable[[Step], None] | None = None,
) -> list[str]:
    """Runs every step of `block`, asserts each printed what the docs show; the outputs."""
    outputs = []
    for step in steps(block):
        out = running.run(step.command)
        outputs.append(out)
        if after is not None:
            after(step)
        assert normalised(out, volatile) == normalised(step.shown, volatile), (
            f"{block.page}:{block.line}: `{step.command}` printed\n{out}\n"
            f"background:\n{running.background_output()}"
        )
    return outputs
