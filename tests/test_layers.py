"""The package's layers, read from the source (every import, module-level or inside a function):

    leaves (errors, patches.base, upstream)  <  core  <  patches  <  methods  <  tools

* no import cycle between the package's modules, function-local imports included (a local import
  cannot hide one);
* the leaves import nothing of the package (``upstream`` only the errors);
* core modules import no patch module (except :mod:`fastreid_plugins.patches.base`), no method
  and no tool; patch modules no method and no tool; a method no other method and no tool.
"""

import ast
import os

from helpers import ROOT

PKG = "fastreid_plugins"
PKG_DIR = os.path.join(ROOT, PKG)
METHODS = ("mfgnet", "mbfn", "svrn", "clip_senet")
TOOLS = ("tools", "reproduce")
LEAVES = (f"{PKG}.errors", f"{PKG}.patches.base")


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
    if name in LEAVES or name == f"{PKG}.upstream":
        return 0
    if len(parts) == 1:
        return 5  # the package __init__ imports everything, by design
    top = parts[1]
    if top == "reproduce" and len(parts) > 2 and parts[2] in ("registry", "papers"):
        return 1  # the ablation registry is data (the methods' ABLATIONS derive from it)
    if top in TOOLS:
        return 4
    if top in METHODS:
        return 3
    if top == "patches":
        return 2
    return 1


def test_no_import_cycle_local_imports_included():
    graph = _graph()
    graph[PKG] = set()  # the root __init__ (everything imports it implicitly) is not a node
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
            if m == PKG or (n.startswith(m + ".")):
                continue  # a module's own package
            ln, lm = _layer(n), _layer(m)
            same_method = (ln == lm == 3 and n.split(".")[1] == m.split(".")[1])
            if lm > ln or (ln == lm == 3 and not same_method):
                wrong.append(f"{n} (layer {ln}) imports {m} (layer {lm})")
    assert not wrong, "layer violations:\n" + "\n".join(sorted(wrong))


def test_leaves_import_nothing_of_the_package():
    graph = _graph()
    for leaf in LEAVES:
        assert graph[leaf] == set(), (leaf, graph[leaf])
    assert graph[f"{PKG}.upstream"] <= {f"{PKG}.errors"}


def test_the_checker_sees_a_function_local_import(tmp_path):
    """The checker itself can fail: a function-local import is an edge like any other (on the
    tree before this layout it reported compat -> distributed -> compat and
    compat -> modeling.pretrained -> compat)."""
    modules = {f"{PKG}.a": str(tmp_path / "a.py"), f"{PKG}.b": str(tmp_path / "b.py")}
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    assert _imports(f"{PKG}.a", modules[f"{PKG}.a"], modules) == {f"{PKG}.b"}
    assert _imports(f"{PKG}.b", modules[f"{PKG}.b"], modules) == {f"{PKG}.a"}
