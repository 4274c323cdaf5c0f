"""The Makefile (issue 27): FastReID installed last without dependencies (pip then prints no
conflict ERROR block), and FASTREID_DATASETS passed to `make demo` only when given or when
../shared/datasets exists (a fresh clone without it gets the synthetic demo, not an error)."""

import os
import re
import shutil
import subprocess

import pytest
from helpers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _recipe(target):
    text = open(os.path.join(ROOT, "Makefile")).read()
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n|\s*#.*\n)+)", text, re.M)
    return [ln.strip() for ln in m.group(1).splitlines() if ln.startswith("\t")]


def test_fastreid_is_the_last_install_and_without_dependencies():
    pips = [ln for ln in _recipe("$(STAMP)") if "$(PIP) install" in ln]
    assert "$(FASTREID)" in pips[-1] and "--no-deps" in pips[-1], pips
    # pip 23+ checks conflicts only when dependencies are resolved (install.py:
    # should_warn_about_conflicts = not options.ignore_dependencies and ...)
    assert all("$(FASTREID)" not in p for p in pips[:-1]), pips


def _demo_line(tmp_path, *args, env_datasets=None):
    work = tmp_path / "clone"
    work.mkdir(exist_ok=True)
    shutil.copy(os.path.join(ROOT, "Makefile"), work / "Makefile")
    (work / "setup.py").write_text("")
    (work / ".venv").mkdir(exist_ok=True)
    (work / ".venv" / ".installed-stamp").write_text("")
    # a fresh shell's make: no FASTREID_DATASETS, and none of an outer make's variables (`make
    # test FASTREID_DATASETS=...` passes them on through MAKEFLAGS)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTREID_DATASETS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    if env_datasets:
        env["FASTREID_DATASETS"] = env_datasets
    out = subprocess.run(["make", "-n", "demo", *args], cwd=work, env=env, capture_output=True,
                         text=True, check=True).stdout
    return [ln for ln in out.splitlines() if "tools.demo" in ln][0]


def test_make_demo_passes_the_datasets_folder_only_when_there_or_given(tmp_path):
    assert not _demo_line(tmp_path).startswith("FASTREID_DATASETS")
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    assert _demo_line(tmp_path).startswith("FASTREID_DATASETS=../shared/datasets ")
    assert _demo_line(tmp_path, "FASTREID_DATASETS=/x").startswith("FASTREID_DATASETS=/x ")
    assert _demo_line(tmp_path, env_datasets="/y").startswith("FASTREID_DATASETS=/y ")
