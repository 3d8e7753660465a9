"""The package depends on aiohttp's public API only (STYLE 13): a minor aiohttp release that
reshapes its internals must not break the server's bounds."""

from __future__ import annotations

import ast
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import agent_registry_exporter

PACKAGE = Path(agent_registry_exporter.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
# `web` is a documented submodule, not a name in `aiohttp.__all__`.
PUBLIC = {"aiohttp": {*aiohttp.__all__, "web"}, "aiohttp.web": set(web.__all__)}


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def aiohttp_names(tree: ast.Module) -> set[str]:
    """Local names bound to aiohttp modules or objects by the module's imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if _ours(a.name)}
        elif isinstance(node, ast.ImportFrom) and _ours(node.module or ""):
            names |= {a.asname or a.name for a in node.names}
    return names


def _ours(module: str) -> bool:
    return module == "aiohttp" or module.startswith("aiohttp.")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
class TestPublicAiohttpOnly:
    def test_imports_only_public_aiohttp_names(self, path: Path) -> None:
        """`from aiohttp import X` / `from aiohttp.web import X` with X in their `__all__`;
        no private module (`aiohttp.web_protocol`, `aiohttp.web_server`, ...)."""
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and _ours(node.module or ""):
                assert node.module in PUBLIC, f"line {node.lineno}: imports {node.module}"
                private = {a.name for a in node.names} - PUBLIC[node.module]
                assert not private, f"line {node.lineno}: {sorted(private)} not public"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not _ours(alias.name) or alias.name in PUBLIC, (
                        f"line {node.lineno}: imports {alias.name}"
                    )

    def test_derives_no_class_from_aiohttp(self, path: Path) -> None:
        """No subclass of an aiohttp class: overriding a runner's or a site's methods means
        re-implementing them on their private attributes."""
        tree = parsed(path)
        ours = aiohttp_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    root = base
                    while isinstance(root, ast.Attribute):
                        root = root.value
                    assert not (isinstance(root, ast.Name) and root.id in ours), (
                        f"line {node.lineno}: {node.name} derives from {ast.unparse(base)}"
                    )

    def test_reaches_only_public_names_through_aiohttp(self, path: Path) -> None:
        """`web.X` and `aiohttp.X` only for X in the module's `__all__`; nothing reached
        through any other aiohttp name starts with an underscore."""
        tree = parsed(path)
        ours = aiohttp_names(tree)
        modules = {"aiohttp": PUBLIC["aiohttp"], "web": PUBLIC["aiohttp.web"]}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if not (isinstance(root, ast.Name) and root.id in ours):
                continue
            where = f"line {node.lineno}: {ast.unparse(node)}"
            if node.value is root and root.id in modules:
                assert node.attr in modules[root.id], f"{where} is not public"
            assert not node.attr.startswith("_"), f"{where} is private"
