"""The house: imports go down the stages of docs/architecture.md, form no circle, and never reach the CLI.

Every import of one package module by another counts, at the top of a file or inside a function. The
stage of each module is read from the table in docs/architecture.md, so the document and the rule cannot
drift apart."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "y90opt"


def stages() -> dict[str, int]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| `([A-Za-z_]+)` \|", text, re.M)
    return {name: int(stage) for stage, name in rows}


def imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Package modules imported by the file at ``path`` (relative or absolute imports, at any depth)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.level == 0 and node.module and node.module.split(".")[0] == "y90opt":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            else:
                names = []
            out.update(names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("y90opt."))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and str(arg.value).startswith("y90opt."):
                out.add(str(arg.value).split(".")[1])
    return {m for m in out if m in modules and m != path.stem}


def graph() -> dict[str, set[str]]:
    files = {p.stem: p for p in PKG.glob("*.py")}
    return {m: imports(p, set(files)) for m, p in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(edges):
        if u not in state:
            visit(u)
    return found


def test_every_module_has_a_stage():
    missing = sorted(set(graph()) - set(stages()))
    assert not missing, f"add these modules to the table of docs/architecture.md: {missing}"
    stale = sorted(set(stages()) - set(graph()))
    assert not stale, f"docs/architecture.md lists modules that do not exist: {stale}"


def test_imports_go_down_the_stages():
    st = stages()
    wrong = [f"{a} (stage {st[a]}) imports {b} (stage {st[b]})"
             for a, bs in sorted(graph().items()) for b in sorted(bs) if st[b] >= st[a]]
    assert not wrong, "imports against the arrows of docs/architecture.md: " + "; ".join(wrong)


def test_no_import_circle():
    assert cycles(graph()) == []


def test_no_library_module_imports_the_cli():
    users = sorted(m for m, bs in graph().items() if "cli" in bs)
    assert users == []


def test_only_the_package_face_and_the_cli_import_the_api():
    users = sorted(m for m, bs in graph().items() if "api" in bs)
    assert users == ["__init__", "cli"]


def test_the_checker_sees_a_circle_and_a_function_level_import(tmp_path):
    """Mutation check of the checker itself: a circle through an import inside a function is found."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n    return x\n")
    mods = {"a", "b"}
    edges = {"a": imports(tmp_path / "a.py", mods), "b": imports(tmp_path / "b.py", mods)}
    assert edges == {"a": {"b"}, "b": {"a"}}
    assert cycles(edges) == [["a", "b", "a"]]


@pytest.mark.parametrize("heavy", ["jax", "xarray", "matplotlib", "optuna", "scipy"])
def test_importing_the_package_is_cheap(heavy):
    code = f"import sys, y90opt; y90opt.InputError; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_the_api_names_load_on_first_use():
    code = "import y90opt; print(callable(y90opt.plan), 'plan' in dir(y90opt))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "True"]


def test_no_module_is_named_like_an_api_function():
    """Importing a submodule sets an attribute of the package: a module named ``simulate`` would hide the
    function ``y90opt.simulate`` once anything imported it."""
    import y90opt

    assert not (set(y90opt._API) & set(graph()))
    code = ("import importlib, pkgutil, y90opt\n"
            "for m in pkgutil.iter_modules(y90opt.__path__): importlib.import_module('y90opt.' + m.name)\n"
            "print(all(callable(getattr(y90opt, n)) for n in y90opt._API))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "True"
