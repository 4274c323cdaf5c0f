"""Every public function and method of the package has type hints (issue 20, point 7).

Public, per module of ``fastreid_plugins`` (every ``.py`` under the package, imported):

* the names in the module's ``__all__``; a module without ``__all__``: its names not starting
  with ``_`` that the module itself defines (``obj.__module__``), not the ones it imports;
* of a public class: every method the class itself defines (its ``__dict__``; inherited ones are
  checked where they are defined) whose name does not start with ``_``, plus ``__init__``,
  ``__call__``, ``__new__`` and the container protocol (``__len__``, ``__iter__``,
  ``__getitem__``); ``staticmethod`` / ``classmethod`` unwrapped.

Checked: every parameter except a method's first (``self`` / ``cls``) has an annotation, and the
return has one (``-> None`` included). Exempt: properties; methods a ``dataclass`` or
``NamedTuple`` generates (their code is not in the module's file; they carry the fields' types
anyway); ``*args`` / ``**kwargs`` only where :data:`UNTYPED_VARARGS` names them with the reason
(none today: a pass-through ``**kwargs`` is annotated ``Any``). :func:`test_annotations_resolve`
also evaluates every annotation (``typing.get_type_hints``; names imported under
``if TYPE_CHECKING:`` included), so a misspelt or never-imported name fails too. Both checkers can
fail (:func:`test_the_checker_reports_a_missing_annotation`,
:func:`test_the_resolver_reports_an_unknown_name`).
"""

import ast
import functools
import importlib
import importlib.util
import inspect
import os
import sys
import typing

import pytest
from helpers import ROOT

PKG = "fastreid_plugins"
#: modules not imported: ``python -m fastreid_plugins.patches`` prints the report at import and
#: defines nothing
SKIP_MODULES = {f"{PKG}.patches.__main__"}
#: dunder methods checked besides the public (not ``_``-prefixed) ones
CHECKED_DUNDERS = {"__init__", "__call__", "__new__", "__len__", "__iter__", "__getitem__"}
#: ``"module:qualname"`` -> why its ``*args`` / ``**kwargs`` stay unannotated (the rest of its
#: signature is still checked)
UNTYPED_VARARGS = {
}


def _module_names():
    names = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, PKG)):
        for f in sorted(files):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                if name not in SKIP_MODULES:
                    names.append(name)
    return sorted(names)


def public_objects(module):
    """``(qualified name, object)`` of the module's public functions and classes."""
    if hasattr(module, "__all__"):
        names = list(module.__all__)
    else:
        names = [n for n, obj in vars(module).items() if not n.startswith("_")
                 and getattr(obj, "__module__", None) == module.__name__]
    out = []
    for n in names:
        obj = getattr(module, n)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj):
            out.append((f"{getattr(obj, '__module__', module.__name__)}:"
                        f"{getattr(obj, '__qualname__', n)}", obj))
    return out


def _generated(fn, cls):
    """A method ``dataclass`` / ``NamedTuple`` wrote (its code is not in the class's file)."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    mod = sys.modules.get(cls.__module__)
    return code is None or mod is None or code.co_filename != getattr(mod, "__file__", None)


def callables_of(qualname, obj):
    """``(qualified name, function, is_method)`` to check for one public object."""
    if not inspect.isclass(obj):
        return [(qualname, obj, False)]
    out = []
    for name, attr in vars(obj).items():
        if name.startswith("_") and name not in CHECKED_DUNDERS:
            continue
        if isinstance(attr, property):
            continue
        is_method = True
        if isinstance(attr, staticmethod):  # ``__new__`` is one implicitly, and takes ``cls``
            attr, is_method = attr.__func__, name == "__new__"
        elif isinstance(attr, classmethod):
            attr = attr.__func__
        if not inspect.isfunction(inspect.unwrap(attr)):
            continue  # a class attribute, a nested class (a public class is listed on its own)
        if _generated(attr, obj):
            continue
        out.append((f"{qualname}.{name}", attr, is_method))
    return out


def missing_annotations(qualname, fn, is_method, untyped_varargs=None):
    """What ``fn`` lacks: ``["param x", "return", ...]`` (empty when fully annotated)."""
    untyped_varargs = UNTYPED_VARARGS if untyped_varargs is None else untyped_varargs
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if is_method and params:
        params = params[1:]  # self / cls
    missing = []
    for p in params:
        if p.annotation is not inspect.Parameter.empty:
            continue
        if (p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and qualname in untyped_varargs):
            continue
        missing.append(f"param {p.name}")
    if sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


@functools.lru_cache(maxsize=None)
def _all_checked():
    seen, out = set(), []
    for name in _module_names():
        module = importlib.import_module(name)
        for qualname, obj in public_objects(module):
            for q, fn, is_method in callables_of(qualname, obj):
                if id(fn) not in seen:  # a re-export (``__init__``'s ``__all__``) counts once
                    seen.add(id(fn))
                    out.append((q, fn, is_method))
    return tuple(out)


def test_every_public_function_is_annotated():
    checked = _all_checked()
    assert len(checked) > 300, len(checked)  # the walk found the package
    missing = {q: m for q, fn, is_method in checked
               if (m := missing_annotations(q, fn, is_method))}
    assert not missing, f"{len(missing)} public functions lack annotations:\n" + "\n".join(
        f"  {q}: {', '.join(m)}" for q, m in sorted(missing.items()))


def _type_checking_namespace(module):
    """The module's globals plus what its ``if TYPE_CHECKING:`` blocks import (names used only in
    string annotations under ``from __future__ import annotations``)."""
    ns = dict(vars(module))
    tree = ast.parse(open(module.__file__).read(), module.__file__)
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            for stmt in node.body:
                try:
                    exec(compile(ast.Module(body=[stmt], type_ignores=[]), module.__file__,
                                 "exec"), ns)
                except ModuleNotFoundError:  # an optional dependency (transformers: the "clip"
                    for alias in getattr(stmt, "names", ()):  # extra) that is not installed
                        ns.setdefault((alias.asname or alias.name).split(".")[0], typing.Any)
    return ns


def test_annotations_resolve():
    """Every annotation of a checked function names something real: ``typing.get_type_hints``
    evaluates it in the module's namespace (plus its ``TYPE_CHECKING`` imports)."""
    broken = unresolved(_all_checked())
    assert not broken, "annotations that do not resolve:\n" + "\n".join(broken)


def unresolved(checked):
    """``["  qualname: error"]`` of the functions whose annotations do not evaluate."""
    namespaces, broken = {}, []
    for q, fn, _ in checked:
        mod = sys.modules[inspect.unwrap(fn).__module__]
        if mod.__name__ not in namespaces:
            namespaces[mod.__name__] = _type_checking_namespace(mod)
        try:
            typing.get_type_hints(fn, globalns=namespaces[mod.__name__])
        except Exception as e:  # NameError, a bad subscript, ...
            broken.append(f"  {q}: {type(e).__name__}: {e}")
    return broken


def test_the_resolver_reports_an_unknown_name(tmp_path):
    """A name imported under ``TYPE_CHECKING`` resolves; one imported nowhere does not."""
    path = tmp_path / "typed_example.py"
    path.write_text("from __future__ import annotations\n"
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n"
                    "    from decimal import Decimal\n"
                    "def good(x: Decimal) -> Decimal:\n    return x\n"
                    "def bad(x: Fraction) -> int:\n    return 0\n")
    spec = importlib.util.spec_from_file_location("typed_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["typed_example"] = module
    try:
        spec.loader.exec_module(module)
        broken = unresolved([("m:good", module.good, False), ("m:bad", module.bad, False)])
    finally:
        del sys.modules["typed_example"]
    assert len(broken) == 1 and broken[0].startswith("  m:bad: NameError"), broken


def test_untyped_varargs_entries_exist():
    """Every :data:`UNTYPED_VARARGS` entry names a checked function with ``*args``/``**kwargs``
    (a stale entry would silently allow a later one)."""
    checked = {q: fn for q, fn, _ in _all_checked()}
    for q in UNTYPED_VARARGS:
        assert q in checked, q
        kinds = {p.kind for p in inspect.signature(checked[q]).parameters.values()}
        assert kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}, q


def test_the_checker_reports_a_missing_annotation():
    """The checker can fail: each kind of gap is reported, and only the gaps."""
    def full(a: int, *args: int, b: str = "", **kw: float) -> None:
        pass

    def no_param(a, b: int) -> int:
        return b

    def no_return(a: int):
        return a

    def varargs(a: int, *args, **kwargs) -> None:
        pass

    class C:
        def __init__(self, x):
            self.x = x

        @staticmethod
        def s(y: int):
            return y

        @classmethod
        def c(cls, z: int) -> int:
            return z

        @property
        def p(self):
            return self.x

        def _private(self, w):
            return w

    assert missing_annotations("m:full", full, False) == []
    assert missing_annotations("m:no_param", no_param, False) == ["param a"]
    assert missing_annotations("m:no_return", no_return, False) == ["return"]
    assert missing_annotations("m:varargs", varargs, False) == ["param args", "param kwargs"]
    assert missing_annotations("m:varargs", varargs, False, {"m:varargs": "why"}) == []
    found = {q.rsplit(".", 1)[1]: missing_annotations(q, fn, m)
             for q, fn, m in callables_of("m:C", C)}
    assert found == {"__init__": ["param x", "return"], "s": ["return"], "c": []}


@pytest.mark.parametrize("name", ["fastreid_plugins.errors", "fastreid_plugins.tools"])
def test_public_objects_follow_all(name):
    """``__all__`` decides what is public where a module has one."""
    module = importlib.import_module(name)
    got = {q.split(":")[1].split(".")[0] for q, _ in public_objects(module)}
    assert got <= set(module.__all__)
