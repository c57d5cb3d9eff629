"""The layout rules of the brief, checked on the source: methods never import backbones and backbones never import
methods; no private name (``_x``, or a ``_module``) crosses a folder."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("benchmark", "methods", "backbones", "tasks")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every import in ``path`` (names empty for ``import x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder,forbidden", [("methods", "backbones"), ("backbones", "methods")])
def test_methods_and_backbones_never_import_each_other(folder, forbidden):
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p in _files(folder)
           for mod, _, line in _imports(p) if mod == forbidden or mod.startswith(forbidden + ".")]
    assert not bad, bad


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_private_name_crosses_a_folder(folder):
    bad = []
    for p in _files(folder):
        for mod, names, line in _imports(p):
            top = mod.split(".")[0]
            if top not in FOLDERS or top == folder:
                continue
            parts = mod.split(".")[1:] + names
            private = [x for x in parts if x.startswith("_") and not x.startswith("__")]
            if private:
                bad.append(f"{p.relative_to(REPO)}:{line} imports {mod} {names}")
        bad += _private_attributes(p, folder)
    assert not bad, bad


def _private_attributes(path: Path, folder: str) -> list[str]:
    """``alias._name`` where ``alias`` is a module of another folder (``from tasks import vision8 as _v8``)."""
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in FOLDERS and top != folder:
                aliases |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and a.name.split(".")[0] in FOLDERS
                        and a.name.split(".")[0] != folder}
    return [f"{path.relative_to(REPO)}:{n.lineno} uses {n.value.id}.{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
            and n.attr.startswith("_") and not n.attr.startswith("__")]


def test_the_private_name_check_sees_an_attribute_of_another_folders_module(tmp_path, monkeypatch):
    """The check above would have caught the old backbones/clip_vit.py (``_v8._u``)."""
    f = REPO / "backbones" / "_layout_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from tasks import vision8 as _v8\nx = _v8._u\n"
                        if self == f else Path.read_bytes(self).decode())
    assert _private_attributes(f, "backbones") == ["backbones/_layout_probe.py:2 uses _v8._u"]
