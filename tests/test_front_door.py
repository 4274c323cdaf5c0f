"""The front door: importing the package does nothing until asked (issue 26, point 1).

Each check runs in a fresh interpreter (``subprocess``): the test process itself is activated by
``conftest.py``, as train_net.py and the tools activate theirs.
"""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

#: modules that need neither torch nor FastReID: importing them must import neither
LIGHT_MODULES = ["fastreid_plugins", "fastreid_plugins.errors", "fastreid_plugins.version",
                 "fastreid_plugins.config", "fastreid_plugins.method", "fastreid_plugins.cli",
                 "fastreid_plugins.upstream", "fastreid_plugins.patches",
                 "fastreid_plugins.patches.base", "fastreid_plugins.reproduce",
                 "fastreid_plugins.reproduce.registry", "fastreid_plugins.reproduce.runner",
                 "fastreid_plugins.reproduce.report", "fastreid_plugins.tools",
                 "fastreid_plugins.tools.demo", "fastreid_plugins.tools.export_onnx",
                 "fastreid_plugins.tools.export", "fastreid_plugins.tools.strip_checkpoint",
                 "fastreid_plugins.tools.heldout_cams",
                 "fastreid_plugins.tools.extract", "fastreid_plugins.tools.search",
                 "fastreid_plugins.tools.calibrate", "fastreid_plugins.tools.gallery",
                 "fastreid_plugins.gallery", "fastreid_plugins.gallery.store",
                 "fastreid_plugins.deploy", "fastreid_plugins.papers"]

#: the command-line front ends: ``--help`` must answer without torch or FastReID
COMMANDS = ["fastreid_plugins.tools.demo", "fastreid_plugins.tools.export_onnx",
            "fastreid_plugins.tools.export",
            "fastreid_plugins.tools.strip_checkpoint", "fastreid_plugins.tools.heldout_cams",
            "fastreid_plugins.tools.visualize", "fastreid_plugins.reproduce",
            "fastreid_plugins.tools.extract", "fastreid_plugins.tools.search",
            "fastreid_plugins.tools.calibrate", "fastreid_plugins.patches",
            "fastreid_plugins.tools.gallery"]

HEAVY = ("torch", "fastreid", "faiss", "torchvision", "pymilvus", "milvus_lite", "milvus")


def _python(code, timeout=120, env=None):
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full.update(env or {})
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT, env=full)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _loaded_after(code):
    """Which of :data:`HEAVY` are in ``sys.modules`` after running ``code`` in a fresh process."""
    out = _python(code + "\nimport sys, json\n"
                  f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_import_neither_torch_nor_fastreid(module):
    assert _loaded_after(f"import {module}") == []


@pytest.mark.parametrize("module", COMMANDS)
def test_help_answers_without_torch_or_fastreid(module):
    code = ("import runpy, sys\n"
            f"sys.argv = [{module!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n")
    assert _loaded_after(code) == []


def test_import_changes_nothing_in_fastreid():
    """Importing the package (and its patch records) leaves FastReID as it is: no patch applied,
    FastReID's own optimizer builder and launch worker in place."""
    out = _python("import fastreid_plugins, fastreid_plugins.patches as p\n"
                  "import fastreid_plugins.patches.compat\n"  # the import shims alone
                  "import fastreid.solver.build as b, fastreid.engine.launch\n"
                  "import sys\n"
                  "launch = sys.modules['fastreid.engine.launch']\n"
                  "print(p.active(), b.build_optimizer.__module__,\n"
                  "      launch._distributed_worker.__module__)")
    assert out.split() == ["['torch._six',", "'collections.Mapping']", "fastreid.solver.build",
                           "fastreid.engine.launch"]


def test_importing_a_method_package_registers_it_and_applies_the_patches():
    """FastReID's project idiom: ``import fastreid_plugins.svrn`` registers SVRN (and not the other
    methods) and patches FastReID."""
    out = _python("import fastreid_plugins.svrn\n"
                  "from fastreid.modeling.meta_arch import META_ARCH_REGISTRY as R\n"
                  "from fastreid_plugins import patches, upstream\n"
                  "names = upstream.registry_names(R)\n"
                  "print('SVRN' in names, 'MFGNet' in names, len(patches.active()))")
    svrn, mfgnet, n = out.split()
    assert (svrn, mfgnet) == ("True", "False") and int(n) > 10


def test_activate_registers_every_method_once_and_is_idempotent():
    out = _python("import fastreid_plugins\n"
                  "from fastreid_plugins import patches, upstream\n"
                  "fastreid_plugins.activate(); first = patches.active()\n"
                  "fastreid_plugins.activate(); second = patches.active()\n"
                  "from fastreid.modeling.meta_arch import META_ARCH_REGISTRY as R\n"
                  "from fastreid.data.datasets import DATASET_REGISTRY as D\n"
                  "names = set(upstream.registry_names(R)) | set(upstream.registry_names(D))\n"
                  "want = {'MFGNet', 'MBFN', 'SVRN', 'CLIPSENet', 'VRIC', 'VeRiViewpoint'}\n"
                  "print(first == second, len(first), want <= names)")
    same, n, registered = out.split()
    assert same == "True" and int(n) > 10 and registered == "True"


def test_patches_command_reports_the_state_of_its_process():
    """``python -m fastreid_plugins.patches`` lists every patch, none active in a fresh process
    but the two import shims (reading FastReID's modules needs them); with ``--activate`` it
    reports the ones that applied."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "fastreid_plugins.patches"]
    bare = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    on = subprocess.run(cmd + ["--activate"], capture_output=True, text=True, timeout=120,
                        cwd=ROOT, env=env)
    assert bare.returncode == 0 and on.returncode == 0, bare.stderr + on.stderr
    assert "(2 active in this process)" in bare.stdout
    assert "torch._six  [compat; active;" in bare.stdout
    assert "optimizer.zero_grad  [trainer; not active in this process;" in bare.stdout
    n_active = int(on.stdout.rsplit("(", 1)[1].split()[0])
    assert n_active > 10 and "optimizer.zero_grad  [trainer; active;" in on.stdout


@pytest.mark.parametrize("trigger", ["import fastreid_plugins; fastreid_plugins.activate()",
                                     "import fastreid_plugins.svrn"])
def test_missing_fastreid_gives_install_instructions(trigger):
    """Activation (explicit, or by importing a method) without FastReID names the fix; importing
    the package alone still works."""
    _python("import sys; sys.modules['fastreid'] = None\nimport fastreid_plugins")
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c",
                          f"import sys; sys.modules['fastreid'] = None\n{trigger}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert res.returncode != 0
    assert "pip install --no-deps fastreid==1.4.0" in res.stderr and "PYTHONPATH" in res.stderr
    assert sys.executable in res.stderr or os.path.realpath(sys.executable) in res.stderr \
        or "interpreter" in res.stderr
