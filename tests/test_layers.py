"""The package's layers, read from the source (every import, module-level or inside a function):

    leaves (errors, version, upstream, patches.base, patches.compat)  <  core  <  patches
    <  engine  <  methods  <  tools, reproduce, activation  <  the package root and the
    ``__main__`` programs

* no import cycle between the package's modules (the root included), function-local imports
  included (a local import cannot hide one);
* no module imports one of a higher layer, nor a method another method; nothing imports the
  package root (it only re-exports);
* the leaves import only leaves;
* every module that imports FastReID imports ``fastreid_plugins.patches.compat`` first (the torch 2
  / Python 3.11 import shims, without which ``fastreid.data`` does not import).
* no special cases: the paper tables (:mod:`fastreid_plugins.papers`) and the method records
  (:mod:`fastreid_plugins.method`) are core because they import nothing above it.
"""

import ast
import os
import re

from helpers import ROOT

from fastreid_plugins.method import METHODS as _RECORDS

PKG = "fastreid_plugins"
PKG_DIR = os.path.join(ROOT, PKG)
METHODS = tuple(_RECORDS)   # the method packages: one per record
TOOLS = ("tools", "reproduce", "activation")
LEAVES = (f"{PKG}.errors", f"{PKG}.version", f"{PKG}.upstream", f"{PKG}.patches.base",
          f"{PKG}.patches.compat")


def _modules():
    out = {}
    for dirpath, _, files in os.walk(PKG_DIR):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                out[name] = path
    return out


def _imports(name, path, modules):
    """The package modules ``name`` imports (resolving relative imports; ``from pkg import sub``
    counts as importing ``pkg.sub`` when ``sub`` is a module)."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith("__init__.py")
    base = name if is_pkg else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PKG))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                target = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{target}.{node.module}" if node.module else target
            else:
                target = node.module or ""
            if not target.startswith(PKG):
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found.update(subs or [target])
    return {m for m in found if m in modules and m != name}


def _graph():
    modules = _modules()
    return {n: _imports(n, p, modules) for n, p in modules.items()}


def _layer(name):
    parts = name.split(".")
    if name in LEAVES:
        return 0
    if len(parts) == 1 or parts[-1] == "__main__":
        return 6  # the package root (activate() imports the methods) and the programs
    top = parts[1]
    if top in TOOLS:
        return 5
    if top in METHODS:
        return 4
    if top == "engine":
        return 3
    if top == "patches":
        return 2
    return 1


def test_no_import_cycle_local_imports_included():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    # (a subpackage __init__ re-exporting its submodules is a cycle only if one imports it back)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers():
    graph = _graph()
    wrong = []
    for n, deps in graph.items():
        for m in deps:
            if n.startswith(m + ".") and m != PKG:
                continue  # a module's own package (its __init__)
            ln, lm = _layer(n), _layer(m)
            same_method = (ln == lm == 3 and n.split(".")[1] == m.split(".")[1])
            if lm > ln or (ln == lm == 3 and not same_method):
                wrong.append(f"{n} (layer {ln}) imports {m} (layer {lm})")
    assert not wrong, "layer violations:\n" + "\n".join(sorted(wrong))


def test_leaves_import_only_leaves():
    graph = _graph()
    for leaf in LEAVES:
        assert graph[leaf] <= set(LEAVES), (leaf, graph[leaf])
    assert graph[f"{PKG}.errors"] == set() and graph[f"{PKG}.patches.base"] == set()


def _compat_rule_violations(name, path):
    """Why module ``name`` breaks the compat rule ("" if it keeps it): a module-level FastReID
    import, or a FastReID data / engine / evaluation import anywhere (outside ``if
    TYPE_CHECKING:``), needs ``import fastreid_plugins.patches.compat`` at module level, before
    its first FastReID import."""
    tree = ast.parse(open(path).read(), path)
    checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}

    def fastreid(node, needs_shims=False):
        mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                else [])
        pat = r"fastreid\.(data|engine|evaluation)\b" if needs_shims else r"fastreid(\.|$)"
        return any(re.match(pat, m) for m in mods)

    def compat(node):
        return isinstance(node, ast.Import) and any(a.name == f"{PKG}.patches.compat"
                                                     for a in node.names)

    compat_line = next((n.lineno for n in tree.body if compat(n)), None)
    top = [n.lineno for n in tree.body if fastreid(n)]
    if top and (compat_line is None or compat_line > min(top)):
        return (f"{name} imports FastReID (line {min(top)}) without the compat line"
                if compat_line is None else
                f"{name}: the compat line comes after the FastReID import of line {min(top)}")
    if compat_line is not None:
        return ""
    # no module-level compat line: each function-local FastReID data / engine / evaluation
    # import needs one earlier in its own function
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        local = [n.lineno for n in ast.walk(fn) if id(n) not in checking
                 and fastreid(n, needs_shims=True)]
        shim = [n.lineno for n in ast.walk(fn) if compat(n)]
        if local and not (shim and min(shim) < min(local)):
            return f"{name} imports FastReID (line {min(local)}) without the compat line"
    return ""


def test_fastreid_imports_come_after_the_import_shims():
    wrong = [w for n, p in _modules().items()
             if n not in (f"{PKG}.patches.compat",) for w in [_compat_rule_violations(n, p)] if w]
    assert not wrong, "\n".join(wrong)


def test_the_compat_checker_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom fastreid.data import build_reid_test_loader\n")
    late = tmp_path / "late.py"
    late.write_text("from fastreid.config import CfgNode\nimport fastreid_plugins.patches.compat\n")
    local = tmp_path / "local.py"
    local.write_text("def f():\n    from fastreid.engine import DefaultTrainer\n")
    typing_only = tmp_path / "typing_only.py"
    typing_only.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                           "    from fastreid.engine import DefaultTrainer\n")
    in_function = tmp_path / "in_function.py"
    in_function.write_text("def f():\n    import fastreid_plugins.patches.compat\n"
                           "    from fastreid.data import x\n")
    assert _compat_rule_violations("in_function", str(in_function)) == ""
    good = tmp_path / "good.py"
    good.write_text("import fastreid_plugins.patches.compat\nfrom fastreid.data import x\n")
    assert "without the compat line" in _compat_rule_violations("bad", str(bad))
    assert "comes after" in _compat_rule_violations("late", str(late))
    assert "without the compat line" in _compat_rule_violations("local", str(local))
    assert _compat_rule_violations("typing_only", str(typing_only)) == ""
    assert _compat_rule_violations("good", str(good)) == ""


def test_paper_data_and_method_records_are_core_on_their_own_merits():
    """The tables (``papers``) import only the errors and each other, the records (``method``)
    only the errors and the tables (their method packages are imported by name, on first use of
    the runtime), and no method config reads the reproduction tool any more."""
    graph = _graph()
    papers = {n for n in graph if n == f"{PKG}.papers" or n.startswith(f"{PKG}.papers.")}
    assert {f"{PKG}.papers.{k}" for k in METHODS} <= papers
    for n in papers:
        assert graph[n] <= papers | {f"{PKG}.errors"}, (n, graph[n])
    assert graph[f"{PKG}.method"] <= {f"{PKG}.errors", f"{PKG}.papers"}, graph[f"{PKG}.method"]
    for k in METHODS:
        assert not {m for m in graph[f"{PKG}.{k}.config"] if ".reproduce" in m}, k


def test_the_checker_sees_a_function_local_import(tmp_path):
    """The checker itself can fail: a function-local import is an edge like any other (on the
    tree before this layout it reported compat -> distributed -> compat and
    compat -> modeling.pretrained -> compat)."""
    modules = {f"{PKG}.a": str(tmp_path / "a.py"), f"{PKG}.b": str(tmp_path / "b.py")}
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    assert _imports(f"{PKG}.a", modules[f"{PKG}.a"], modules) == {f"{PKG}.b"}
    assert _imports(f"{PKG}.b", modules[f"{PKG}.b"], modules) == {f"{PKG}.a"}
