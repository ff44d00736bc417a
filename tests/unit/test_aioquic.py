"""discretpeer._aioquic: the release check (the tested one passes, any other fails with what to
install) and the upgrade checklist (every private name it relies on exists in the installed
aioquic, and it uses no private name the checklist forgets)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discretpeer import _aioquic

ROOT = Path(__file__).parents[2]


def test_the_installed_aioquic_is_the_tested_one() -> None:
    _aioquic.check()  # CI installs what pyproject pins


@given(st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True))
def test_any_other_release_is_refused_with_what_to_install(version: str) -> None:
    if version in _aioquic.TESTED:
        _aioquic.check(version)
        return
    with pytest.raises(_aioquic.UntestedAioquic, match=r"pip install 'aioquic==1\.7\.2'"):
        _aioquic.check(version)


def test_pyproject_pins_exactly_the_tested_release() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.startswith("aioquic")]
    assert pins == [f"aioquic=={_aioquic.TESTED[-1]}"]


@pytest.mark.parametrize("module", ["discretpeer._aioquic", "discretpeer.endpoint"])
def test_the_check_runs_when_the_quic_stack_is_imported(module: str) -> None:
    code = f"from importlib import metadata; metadata.version = lambda name: '9.9.9'\nimport {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "aioquic 9.9.9 is installed" in result.stderr


def test_every_private_name_on_the_checklist_exists_in_the_installed_aioquic() -> None:
    assert _aioquic.missing_private_names() == {}


def test_the_checklist_finds_a_name_that_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    api = dict(_aioquic.PRIVATE_API)
    api["aioquic.quic.connection.QuicConnection"] = ("_max_datagram_size", "_no_such_attribute")
    api["aioquic.quic.connection.NoSuchClass"] = ("_x",)
    monkeypatch.setattr(_aioquic, "PRIVATE_API", api)
    assert _aioquic.missing_private_names() == {
        "aioquic.quic.connection.QuicConnection": ["_no_such_attribute"],
        "aioquic.quic.connection.NoSuchClass": ["_x"],
    }


def _private_attributes(tree: ast.AST) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    } | {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "setattr", "hasattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
        and node.args[1].value.startswith("_")
    }


def _own_names(tree: ast.AST) -> set[str]:
    """Private names _aioquic defines itself: its functions, methods, slots and the attributes
    of its own helper classes (those that do not subclass anything of aioquic's)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "__slots__" and isinstance(node.value, ast.Tuple):
                    names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return names


# attributes our own subclasses of aioquic's crypto classes add (not aioquic's)
OWN_ATTRIBUTES = {"_chacha", "_key"}


def test_the_module_uses_no_private_name_missing_from_the_checklist() -> None:
    tree = ast.parse((ROOT / "discretpeer" / "_aioquic.py").read_text())
    listed = {name for names in _aioquic.PRIVATE_API.values() for name in names}
    unlisted = _private_attributes(tree) - listed - _own_names(tree) - OWN_ATTRIBUTES
    assert not unlisted, f"add these to _aioquic.PRIVATE_API (the upgrade checklist): {sorted(unlisted)}"


# aioquic's classes we subclass (directly or through _aioquic's adapters)
AIOQUIC_BASES = {
    "QuicConnection",
    "QuicConnectionProtocol",
    "QuicStreamAdapter",
    "QuicPacketPacer",
    "AEAD",
    "HeaderProtection",
}


def _base_names(node: ast.ClassDef) -> set[str]:
    return {b.id if isinstance(b, ast.Name) else b.attr for b in node.bases if isinstance(b, (ast.Name, ast.Attribute))}


def test_no_other_module_reaches_into_aioquic_privately() -> None:
    """What ruff's SLF001 cannot see: ``self._x`` inside our subclasses of aioquic's classes (of
    a name on the checklist), and a protocol's ``_quic`` anywhere. Only _aioquic may use them."""
    listed = {name for names in _aioquic.PRIVATE_API.values() for name in names}
    trees = {
        path: ast.parse(path.read_text())
        for path in sorted([*(ROOT / "discretpeer").rglob("*.py"), *(ROOT / "beacon").rglob("*.py")])
    }
    classes = [node for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    derived = set(AIOQUIC_BASES)
    while True:  # every class of ours that descends from one of aioquic's, by name
        more = {c.name for c in classes if _base_names(c) & derived} - derived
        if not more:
            break
        derived |= more
    offenders: dict[str, list[str]] = {}
    for path, tree in trees.items():
        if path.name == "_aioquic.py":
            continue
        found = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "_quic"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and _base_names(node) & derived:
                found |= _private_attributes(node) & listed
        if found:
            offenders[str(path.relative_to(ROOT))] = sorted(found)
    assert offenders == {}
