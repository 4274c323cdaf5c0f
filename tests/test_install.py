"""Packaging: FastReID from a git checkout on PYTHONPATH; projects copied into a FastReID
checkout."""

import os
import shutil
import subprocess
import sys

import fastreid
import pytest
from helpers import ROOT

# every test here runs FastReID tools in a subprocess (~20 s each)
pytestmark = pytest.mark.slow

PROJECTS = ["MFGNet", "MBFN", "SVRN", "CLIPSENet"]


def _fake_checkout(tmp_path):
    """A directory shaped like a FastReID git checkout (fastreid/ package at its top)."""
    co = tmp_path / "fast-reid"
    co.mkdir()
    os.symlink(os.path.dirname(fastreid.__file__), co / "fastreid")
    return co


def test_fastreid_git_checkout_on_pythonpath(tmp_path):
    co = _fake_checkout(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{co}{os.pathsep}{ROOT}"}
    code = ("import fastreid, fastreid_plugins\nfastreid_plugins.activate()\n"
            "import fastreid.data, fastreid.engine\nfrom fastreid_plugins import patches\n"
            "print(fastreid.__file__)\nprint(len(patches.active()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    path, n = res.stdout.split()
    assert path.startswith(str(co)) and int(n) >= 9


@pytest.mark.parametrize("project", PROJECTS)
def test_project_runs_when_copied_into_a_fastreid_checkout(tmp_path, project):
    src = os.path.join(ROOT, "projects", project)
    assert os.path.isfile(os.path.join(src, "train_net.py")), \
        f"projects/{project}/train_net.py missing"
    co = _fake_checkout(tmp_path)
    shutil.copytree(src, co / "projects" / project)
    script = co / "projects" / project / "train_net.py"
    res = subprocess.run([sys.executable, str(script), "--help"],
                         capture_output=True, text=True, cwd=str(co))
    assert res.returncode == 0, res.stderr
    for flag in ("--config-file", "--eval-only", "--resume", "--num-gpus", "opts"):
        assert flag in res.stdout
