"""The ablation registry against the papers' text, the reproduce command's scheduling (with a fake
launcher: which rows run where, with which environment), its records and report, and one
end-to-end CPU run of a whole table (``slow``): interrupted in its second row, run again, resumed
without redoing the first row, with a failing row recorded while the others finish.
"""

import csv
import glob
import hashlib
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from fastreid_plugins.errors import ConfigError, UserError
from fastreid_plugins.method import METHODS
from fastreid_plugins.reproduce import registry, runner
from fastreid_plugins.reproduce.registry import (
    Row,
    all_rows,
    get_row,
    get_table,
    table_configs,
    tables,
)
from tests.helpers import ROOT

PY = sys.executable
_NUM = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def shared_dir():
    """``$FASTREID_PLUGINS_SHARED``, else the checkout's ``../shared``."""
    return os.path.abspath(os.environ.get("FASTREID_PLUGINS_SHARED")
                           or os.path.join(ROOT, "..", "shared"))


@pytest.fixture(scope="module")
def papers():
    """``{file name: text}`` of ``shared/papers``; skips when absent, fails with
    ``REQUIRE_SHARED_DATA=1``."""
    d = os.path.join(shared_dir(), "papers")
    if not os.path.isdir(d):
        msg = f"paper texts not found under {d} (set FASTREID_PLUGINS_SHARED)"
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " (REQUIRE_SHARED_DATA=1)")
        pytest.skip(msg)
    return {f: open(os.path.join(d, f), encoding="utf-8").read() for f in os.listdir(d)
            if f.endswith(".md")}


def numbers_in(text):
    return [float(x) for x in _NUM.findall(text)]


def row_problems(table, row, text):
    """What is wrong with ``row``'s stored numbers against the paper ``text`` ([] = nothing)."""
    problems = []
    for ev in row.evidence:
        if ev not in text:
            problems.append(f"evidence not in {table.paper_file}: {ev[:60]!r}")
    found = [n for ev in row.evidence for n in numbers_in(ev)]
    for d, m, v in row.numbers():
        if v not in found:
            problems.append(f"{d} {m} {v} is in none of its evidence")
    for delta in row.deltas:
        if abs(delta.value) not in found:
            problems.append(f"delta {delta} is in none of its evidence")
    if row.numbers() and not row.evidence:
        problems.append("numbers without evidence")
    if table.columns and row.numbers():
        line = row.evidence[0]
        start = text.find(table.anchor)
        region = text[start:start + 3000] if start >= 0 else ""
        if table.anchor and start < 0:
            problems.append(f"anchor {table.anchor!r} not in the paper")
        if line not in [ln.rstrip() for ln in region.splitlines()]:
            problems.append(f"{line!r} is not a line of the table after {table.anchor!r}")
        want = [row.paper.get(d, {}).get(m) for d, m in table.columns]
        got = numbers_in(line)[-len(table.columns):]
        if want != got:
            problems.append(f"columns {table.columns}: stored {want}, the paper's line {got}")
    return problems


# --------------------------------------------------------------------------------------------
# the registry against the papers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_every_stored_number_is_printed_by_the_paper_where_the_row_cites_it(method, papers):
    bad = {}
    for t in tables(method):
        text = papers[t.paper_file]
        if t.anchor:
            assert t.anchor in text, f"{t.key}: anchor {t.anchor!r} not in {t.paper_file}"
        for r in t.rows:
            p = row_problems(t, r, text)
            if p:
                bad[r.key] = p
    assert not bad, json.dumps(bad, indent=1)


def test_the_texts_differences_between_rows_match_the_stored_numbers():
    """Where the text prints a difference between two rows (e.g. MFG-Net Sec. 4.3 "improves the
    6.12% mAP"), the stored numbers of both rows give it (to the printed precision)."""
    checked = 0
    for r in all_rows():
        for d in r.deltas:
            other = get_table(r.method, r.table).row(d.other)
            a, b = r.paper.get(d.dataset, {}).get(d.metric), other.paper.get(d.dataset, {}).get(
                d.metric)
            if a is not None and b is not None:
                assert abs((a - b) - d.value) < 0.006, (r.key, d, a, b)
                checked += 1
    assert checked >= 20


def test_the_checker_can_fail(papers):
    """A changed number, a swapped pair of columns or an invented line is caught."""
    t = get_table("svrn", "II")
    text = papers[t.paper_file]
    r = t.row("scheme_a")
    assert row_problems(t, r, text) == []
    wrong = Row(r.method, r.table, r.row, r.label, r.overrides, {"VeRi": {"mAP": 83.1,
                "Rank-1": 96.5}}, evidence=r.evidence)
    assert row_problems(t, wrong, text)
    swapped = Row(r.method, r.table, r.row, r.label, r.overrides, {"VeRi": {"mAP": 96.5,
                  "Rank-1": 83.0}}, evidence=r.evidence)
    assert any("columns" in p for p in row_problems(t, swapped, text))
    invented = Row(r.method, r.table, r.row, r.label, r.overrides, {"VeRi": {"mAP": 83.1,
                   "Rank-1": 96.5}}, evidence=("Scheme a\t✓\t×\t83.1\t96.5",))
    assert row_problems(t, invented, text)


def test_line_tables_store_every_printed_number_and_their_labels(papers):
    """In a table whose rows are lines of the paper, each line's metric numbers are all stored
    (none left out) and the line is the row's (its label or marks are on it)."""
    for m in METHODS:
        for t in tables(m):
            if not t.columns:
                continue
            for r in t.rows:
                assert len(r.numbers()) == len(t.columns), r.key
                line = r.evidence[0]
                if t.key == "clip_senet/table_iv":
                    marks = r.label.replace("SEM ", "").replace("AFEM ", "").replace("CV ", "")
                    assert line.startswith(marks + " |"), (r.key, line)
                else:
                    assert r.label in line, (r.key, line)


def test_svrn_table_iv_reads_the_column_wise_line_in_order(papers):
    """Table IV's rows were flattened into one line: labels, stage percentages, then the CMC@1
    column (five values for six rows) and the mAP column (six values)."""
    t = get_table("svrn", "IV")
    line = next(ln for ln in papers[t.paper_file].splitlines()
                if ln.startswith("Baseline Scheme a Scheme b"))
    cells = line.split("\t")
    cmc, mAP = numbers_in(cells[-2]), numbers_in(cells[-1])
    assert (len(cmc), len(mAP), len(t.rows)) == (5, 6, 6)
    for i, r in enumerate(t.rows):
        assert r.paper["VeRi"]["mAP"] == mAP[i], r.key
        assert r.paper["VeRi"]["Rank-1"] == (cmc[i] if i < 5 else None), r.key
        assert r.ambiguous, r.key   # which CMC@1 cell was lost is not certain
    assert "VeRi/Rank-1" in t.row("scheme_e").lost


def test_svrn_table_iii_keeps_the_vehicleid_and_veri_wild_columns():
    want = {"baseline": (82.9, 84.0), "2_stages": (84.4, 84.3), "3_stages": (87.5, 85.5),
            "4_stages-ours": (82.0, 82.0)}
    t = get_table("svrn", "III")
    for r in t.rows:
        assert (r.paper["SmallVehicleID"]["Rank-1"], r.paper["SmallVeRiWild"]["mAP"]) == \
            want[r.row]
        assert r.ambiguous   # the columns do not name the test size
    assert t.datasets == ("VeRi", "SmallVehicleID", "SmallVeRiWild")
    assert table_configs(t) == {"VeRi": "configs/veri/svrn.yml",
                                "SmallVehicleID": "configs/vehicleid/svrn_small.yml",
                                "SmallVeRiWild": "configs/veriwild/svrn_small.yml"}


def test_rows_without_numbers_say_why():
    for r in all_rows():
        if not r.numbers():
            assert r.lost, r.key
        for d, ms in r.paper.items():
            for m, v in ms.items():
                if v is None:
                    assert f"{d}/{m}" in r.lost or "*" in r.lost, r.key


def test_reconstructions_are_flagged_in_their_keys():
    ours = {r.key for r in all_rows() if r.ours}
    assert all("-ours" in k for k in ours)
    assert {r.key for r in all_rows() if "-ours" in r.key} == ours
    assert {r.table for r in all_rows("mbfn") if r.ours} == {"table2-ours", "table3-ours"}
    assert "svrn/III/4_stages-ours" in ours
    assert {r.key for r in all_rows("svrn") if r.table == "extra-ours"} <= ours
    assert not any(r.ours for r in all_rows("mfgnet") + all_rows("clip_senet"))
    keys = [r.key for r in all_rows()]
    assert len(keys) == len(set(keys))


def test_unknown_method_table_row_are_user_errors_listing_the_known_ones():
    with pytest.raises(ConfigError, match="known: .*'svrn'"):
        tables("svrnn")
    with pytest.raises(ConfigError, match="known: .*'II'"):
        get_table("svrn", "VII")
    with pytest.raises(UserError, match="known: .*'scheme_a'"):
        get_row("svrn/II/scheme_z")
    with pytest.raises(ConfigError, match="known"):
        registry.rows("mbfn", "table4", ["g", "h"])


def test_the_registry_is_derived_from_the_method_records():
    """Methods, tables, rows and paper configs come from ``METHODS`` (nothing is stored twice):
    every row is one of its record's, every table's configs are its record's, and the old
    per-method views (``ABLATIONS``, ``Ablation``, ``ablation_overrides``) are gone."""
    import importlib

    import fastreid_plugins.reproduce as reproduce
    assert getattr(registry, "METHODS", METHODS) is METHODS   # the records', not a copy
    assert not hasattr(registry, "PROJECTS") and not hasattr(reproduce, "METHODS")
    assert not hasattr(reproduce, "legacy_rows") and "legacy" not in Row.__dataclass_fields__
    for key, m in METHODS.items():
        assert tables(key) is m.tables and [r.key for r in all_rows(key)] == [r.key for r in m.rows]
        for t in m.tables:
            assert table_configs(t) == {d: m.configs[d] for d in t.datasets}
            assert list(table_configs(t))[0] == t.datasets[0]   # run's default config
        for mod in (f"fastreid_plugins.{key}", f"fastreid_plugins.{key}.config"):
            names = set(dir(importlib.import_module(mod)))
            assert not names & {"ABLATIONS", "Ablation", "ablation_overrides", "TABLE_IV"}, mod
    assert [r.key for r in all_rows()] == [r.key for m in METHODS.values() for r in m.rows]
    assert get_row("mfgnet/table3/3_divisions").overrides == ("MODEL.MFGNET.NUM_STRIPES", "4")


def test_a_table_on_a_dataset_without_a_paper_config_is_refused():
    """The records' load check can fail: a table naming a dataset the record has no config for,
    a ``None`` without a reason, a row under another table."""
    from dataclasses import replace

    from fastreid_plugins.papers import check_tables
    t = get_table("svrn", "III")
    check_tables("svrn", (t,), METHODS["svrn"].configs)
    with pytest.raises(ValueError, match=r"svrn/III: datasets .*'VRIC'.*needs a paper config"):
        check_tables("svrn", (replace(t, datasets=("VeRi", "VRIC")),), METHODS["svrn"].configs)
    bad = replace(t.rows[0], paper={"VeRi": {"mAP": None}}, lost={})
    with pytest.raises(ValueError, match="no reason given"):
        check_tables("svrn", (replace(t, rows=(bad,)),), METHODS["svrn"].configs)
    with pytest.raises(ValueError, match="listed under"):
        check_tables("svrn", (replace(t, rows=(replace(t.rows[0], table="II"),)),),
                     METHODS["svrn"].configs)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_row_merges_into_its_tables_paper_configs(method):
    """Every override key exists and every value parses, on every paper config of the table."""
    from fastreid_plugins.config import get_cfg
    from tests.ddp_jobs import project
    add = project(os.path.basename(METHODS[method].project))[0]   # what train_net.py adds
    for t in tables(method):
        for path in table_configs(t).values():
            for r in t.rows:
                cfg = get_cfg(add)
                cfg.merge_from_file(os.path.join(ROOT, path))
                cfg.merge_from_list(list(r.overrides))


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def _cli(*args, timeout=60, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([PY, "-m", "fastreid_plugins.reproduce", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_list_answers_in_under_3_seconds_without_torch():
    t0 = time.time()
    p = _cli("list")
    assert time.time() - t0 < 3.0 and p.returncode == 0, p.stderr
    for m in METHODS:
        assert m in p.stdout
    p = _cli("list", "svrn", "III")
    assert p.returncode == 0
    assert "SmallVehicleID: Rank-1 87.5" in p.stdout and "svrn/III/4_stages-ours" in p.stdout
    assert "8 NVIDIA Titan Xp" in p.stdout
    # the command's process does not import torch or FastReID
    p = subprocess.run([PY, "-X", "importtime", "-m", "fastreid_plugins.reproduce", "list"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    imported = {ln.split("|")[-1].strip() for ln in p.stderr.splitlines() if "|" in ln}
    assert p.returncode == 0 and "fastreid_plugins.reproduce.registry" in imported
    assert {"fastreid_plugins.method", "fastreid_plugins.papers"} <= imported
    assert "torch" not in imported and "fastreid" not in imported, sorted(imported)[:20]
    assert not imported & {f"fastreid_plugins.{k}" for k in METHODS}   # no method package


def test_bad_input_is_one_clear_error():
    p = _cli("run", "svrn", "VII")
    assert p.returncode == 2 and "Error: unknown table 'VII' of svrn; known:" in p.stderr
    p = _cli("run", "svrn", "II", "--rows", "scheme_z", "--dry-run")
    assert p.returncode == 2 and "known: ['baseline', 'scheme_a', 'scheme_b']" in p.stderr
    p = _cli("run", "svrn", "II", "--dry-run", "SOLVER.MAX_EPOCH")
    assert p.returncode == 2 and "pairs" in p.stderr
    p = _cli("run", "svrn", "II", "--dry-run", "--gpus", "0,1,2", "--gpus-per-row", "2")
    assert p.returncode == 2 and "groups of --gpus-per-row 2" in p.stderr
    p = _cli("run", "svrn", "II", "--dry-run", "--config-file", "configs/nope.yml")
    assert p.returncode == 2 and "not found" in p.stderr


def test_dry_run_prints_one_command_per_row(tmp_path):
    p = _cli("run", "mfgnet", "table4", "--dry-run", "--output-dir", str(tmp_path),
             "--gpus", "0,1,2,3", "--gpus-per-row", "2", "SOLVER.MAX_EPOCH", "3")
    assert p.returncode == 0, p.stderr
    cmds = [ln for ln in p.stdout.splitlines() if not ln.startswith("#")]
    assert len(cmds) == 5
    assert cmds[0].startswith("CUDA_VISIBLE_DEVICES=0,1 ") and "--num-gpus 2" in cmds[0]
    assert cmds[1].startswith("CUDA_VISIBLE_DEVICES=2,3 ")
    assert all("projects/MFGNet/train_net.py --config-file configs/veri/mfgnet.yml" in c
               for c in cmds)
    assert re.search(f"SOLVER.MAX_EPOCH 3 OUTPUT_DIR {tmp_path}/mfgnet/table4/baseline/"
                     r"veri-mfgnet-[0-9a-f]{10}$", cmds[0]), cmds[0]
    assert not list(tmp_path.iterdir())   # nothing run, nothing written


def _test_set(config_file):
    """The test set a config names (``DATASETS.TESTS``, through its ``_BASE_`` chain)."""
    path = config_file if os.path.isabs(config_file) else os.path.join(ROOT, config_file)
    while True:
        text = open(path).read()
        m = re.search(r"TESTS:\s*\(\"(\w+)\"", text)
        if m:
            return m.group(1)
        base = re.search(r"^_BASE_:\s*(\S+)", text, re.M)
        path = os.path.join(os.path.dirname(path), base.group(1))


class FakeLauncher:
    """Records each launch (row, folder, argv, env, start / end time) and writes the evaluator's
    JSON (on the config's test set; mAP 80 + SEED, Rank-1 90 - SEED), a ``config.yaml`` and a
    ``last_checkpoint`` as a finished run would; ``fail`` rows exit 1 with an error line."""

    def __init__(self, fail=(), seconds=0.3, epochs=None):
        self.calls, self.fail, self.seconds, self.epochs = [], set(fail), seconds, epochs
        self.lock = threading.Lock()

    def __call__(self, cmd, env, log_path, timeout=None, cwd=None):
        out = cmd[cmd.index("OUTPUT_DIR") + 1]
        row = os.path.basename(os.path.dirname(out))
        t0 = time.time()
        time.sleep(self.seconds)
        with self.lock:
            self.calls.append({"row": row, "dir": out, "cmd": cmd, "env": env,
                               "t0": t0, "t1": time.time()})
        with open(log_path, "a") as f:
            if row in self.fail:
                f.write("Traceback (most recent call last):\n  ...\n"
                        "fastreid_plugins.errors.ConfigError: MODEL.X=1 is invalid\n")
                return 1
            f.write("training...\n")
        seed = int(cmd[cmd.index("SEED") + 1]) if "SEED" in cmd else 0
        epochs = self.epochs or (int(cmd[cmd.index("SOLVER.MAX_EPOCH") + 1])
                                 if "SOLVER.MAX_EPOCH" in cmd else 2)
        test = _test_set(cmd[cmd.index("--config-file") + 1])
        with open(os.path.join(out, "model_final.pth"), "wb") as f:   # before the evaluation
            f.write(b"weights")
        with open(os.path.join(out, f"{test}_results.json"), "w") as f:
            json.dump({"dataset": test, "protocol": "standard", "Rank-1": 90.0 - seed,
                       "Rank-5": 95.0, "Rank-10": 97.0, "mAP": 80.0 + seed, "mINP": 50.0,
                       "metric": 85.0}, f)
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(f"SOLVER:\n  MAX_EPOCH: {epochs}\nINPUT:\n  SIZE_TRAIN: [64, 64]\n"
                    f"MODEL:\n  DEVICE: cpu\nSEED: {seed}\n")
        with open(os.path.join(out, "last_checkpoint"), "w") as f:
            f.write("model_final.pth")
        return 0


def _run_dir(root, key):
    """The one run folder of row ``key`` under ``root``."""
    found = runner.run_dirs(str(root), get_row(key))
    assert len(found) == 1, found
    return found[0]


def _max_overlap(calls):
    events = sorted([(c["t0"], 1) for c in calls] + [(c["t1"], -1) for c in calls])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _jobs(tmp_path, method="svrn", table="V", rows=None):
    return runner.plan(method, table, rows, "configs/demo/svrn.yml", ["SOLVER.MAX_EPOCH", "2"],
                       str(tmp_path))


def test_cpu_host_runs_rows_one_after_another(tmp_path):
    fake = FakeLauncher()
    states = runner.run_rows(_jobs(tmp_path), launcher=fake, progress=False)
    assert list(states.values()) == ["done"] * 6
    assert _max_overlap(fake.calls) == 1
    assert all(c["env"] == {} and "--num-gpus" not in c["cmd"] for c in fake.calls)
    assert [c["row"] for c in fake.calls] == [r.row for r in get_table("svrn", "V").rows]


def test_one_gpu_per_row_runs_rows_side_by_side_pinned_to_their_gpu(tmp_path):
    fake = FakeLauncher(seconds=0.5)
    runner.run_rows(_jobs(tmp_path), gpus=["0", "1", "2", "3"], gpus_per_row=1,
                    launcher=fake, progress=False)
    assert len(fake.calls) == 6
    assert 2 <= _max_overlap(fake.calls) <= 4
    assert {c["env"]["CUDA_VISIBLE_DEVICES"] for c in fake.calls} <= {"0", "1", "2", "3"}
    assert all("--num-gpus" not in c["cmd"] for c in fake.calls)
    # rows running at the same time never share a GPU
    for a in fake.calls:
        for b in fake.calls:
            if a is not b and a["t0"] < b["t1"] and b["t0"] < a["t1"]:
                assert a["env"]["CUDA_VISIBLE_DEVICES"] != b["env"]["CUDA_VISIBLE_DEVICES"]


def test_several_gpus_per_row_run_ddp_inside_the_row_on_its_own_port(tmp_path):
    fake = FakeLauncher(seconds=0.5)
    runner.run_rows(_jobs(tmp_path), gpus=["0", "1", "2", "3"], gpus_per_row=2,
                    launcher=fake, progress=False)
    assert _max_overlap(fake.calls) <= 2
    assert {c["env"]["CUDA_VISIBLE_DEVICES"] for c in fake.calls} == {"0,1", "2,3"}
    for c in fake.calls:
        i = c["cmd"].index("--num-gpus")
        assert c["cmd"][i + 1] == "2" and c["cmd"][i + 2] == "--dist-url"
    ports = [c["cmd"][c["cmd"].index("--dist-url") + 1] for c in fake.calls]
    assert len(set(ports)) == len(ports)
    with pytest.raises(ConfigError, match="groups"):
        runner.slots(["0", "1", "2"], 2)


def test_failed_row_is_recorded_others_finish_finished_rows_are_skipped_and_resumes(tmp_path):
    fake = FakeLauncher(fail={"icc"})
    states = runner.run_rows(_jobs(tmp_path), launcher=fake, progress=False)
    assert states["svrn/V/icc"] == "failed"
    assert sum(s == "done" for s in states.values()) == 5
    icc = _run_dir(tmp_path, "svrn/V/icc")
    result, status = runner.read_row_state(icc)
    assert result is None and status["status"] == "failed" and status["returncode"] == 1
    assert status["error"] == "fastreid_plugins.errors.ConfigError: MODEL.X=1 is invalid"
    assert status["log_tail"][-1] == status["error"]
    done = json.load(open(os.path.join(_run_dir(tmp_path, "svrn/V/vcc"), "result.json")))
    assert done["results"]["VeRi"]["mAP"] == 80.0 and done["paper"]["VeRi"]["mAP"] == 83.8
    assert done["dataset"] == "VeRi" and done["key"] == "svrn/V/vcc"
    # again: only the failed row runs; a row interrupted after a checkpoint resumes
    with open(os.path.join(icc, "last_checkpoint"), "w") as f:
        f.write("model_0000.pth")
    fake2 = FakeLauncher()
    states = runner.run_rows(_jobs(tmp_path), launcher=fake2, progress=False)
    assert [c["row"] for c in fake2.calls] == ["icc"]
    assert "--resume" in fake2.calls[0]["cmd"]
    assert states["svrn/V/icc"] == "done" and list(states.values()).count("skipped") == 5
    # result.json keeps every command run in the folder: the failed one and the resumed one
    cmds = json.load(open(os.path.join(icc, "result.json")))["commands"]
    assert [c["action"] for c in cmds] == ["start", "resume"]
    assert "--resume" in cmds[1]["command"] and "--resume" not in cmds[0]["command"]
    # trained to the end, killed before the final evaluation's results: evaluated only
    d = _run_dir(tmp_path, "svrn/V/dcc")
    os.remove(os.path.join(d, "result.json"))
    with open(os.path.join(d, "model_final.pth"), "wb") as f:   # newer than the results
        f.write(b"")
    os.utime(os.path.join(d, "VeRi_results.json"), (time.time() - 60, time.time() - 60))
    fake4 = FakeLauncher()
    states = runner.run_rows(_jobs(tmp_path), launcher=fake4, progress=False)
    assert [c["row"] for c in fake4.calls] == ["dcc"] and states["svrn/V/dcc"] == "done"
    cmd = fake4.calls[0]["cmd"]
    assert "--eval-only" in cmd and "--resume" not in cmd
    assert cmd[-2:] == ["MODEL.WEIGHTS", os.path.join(d, "model_final.pth")]
    # other settings: other folders (the finished ones are neither used nor overwritten)
    jobs = runner.plan("svrn", "V", None, "configs/demo/svrn.yml", ["SOLVER.MAX_EPOCH", "3"],
                       str(tmp_path))
    assert not {j.out_dir for j in jobs} & {j.out_dir for j in _jobs(tmp_path)}
    fake3 = FakeLauncher()
    states = runner.run_rows(jobs, launcher=fake3, progress=False)
    assert len(fake3.calls) == 6 and set(states.values()) == {"done"}
    assert len(runner.run_dirs(str(tmp_path), get_row("svrn/V/vcc"))) == 2


def test_report_holds_every_row_with_ours_the_papers_and_the_difference(tmp_path):
    from fastreid_plugins.reproduce.report import write_report
    runner.run_rows(_jobs(tmp_path, rows=["baseline", "vcc", "icc"]),
                    launcher=FakeLauncher(fail={"icc"}), progress=False)
    text, paths = write_report("svrn", "V", str(tmp_path))
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| `")}
    assert set(lines) == {f"`{r.row}`" for r in get_table("svrn", "V").rows}
    # mAP ours 80.0, paper 83.8, diff -3.8; Rank-1 ours 90.0, paper 96.8
    assert "| 80.0 | 83.8 | -3.8 | 90.0 | 96.8 | -6.8 |" in lines["`vcc`"]
    assert "| VeRi | done; short run: not comparable |" in lines["`vcc`"]   # 2 of 90 epochs
    assert "failed: fastreid_plugins.errors.ConfigError" in lines["`icc`"]
    assert "| not run |" in lines["`dcc`"] and "| - | 83.5 | - |" in lines["`dcc`"]
    # how it ran: config, epochs against the paper config's, the weights' SHA-256, versions
    how = text[text.index("How each run ran:"):]
    assert "`vcc` on VeRi: config `configs/demo/svrn.yml` (paper config `configs/veri/svrn.yml`)" \
        in how
    assert "2 epochs of the paper config's 90" in how
    assert "sha256 " + hashlib.sha256(b"weights").hexdigest() in how
    assert "torch 2." in how and "FastReID 1.4.0" in how and "device cpu" in how
    assert "short run: not comparable** (2 of the paper config's 90 epochs; input [64, 64], " \
        "the paper config's [256, 256])" in how
    csv_rows = open(paths[1]).read().splitlines()
    assert len(csv_rows) == 1 + 6 * 2   # header + rows x (mAP, Rank-1)
    if len(paths) > 2:
        assert os.path.getsize(paths[2]) > 1000


# --------------------------------------------------------------------------------------------
# end to end on the CPU (slow): a whole table of SVRN, demo-sized
# --------------------------------------------------------------------------------------------
E2E_OPTS = ["SOLVER.MAX_EPOCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "100",
            "INPUT.SIZE_TRAIN", "[64,64]", "INPUT.SIZE_TEST", "[64,64]", "MODEL.SVRN.GRID", "4"]


def _processes_mentioning(text):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def _kill_mentioning(text):
    """SIGKILL what a failed test may have left running (row processes live in sessions of their
    own, so killing the runner's group does not reach them)."""
    for pid in _processes_mentioning(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _wait_for(path, proc, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_e2e_a_table_interrupted_in_its_second_row_resumes_and_reports(veri_root, tmp_path):
    out = str(tmp_path)
    env = dict(os.environ, PYTHONPATH=ROOT, FASTREID_DATASETS=veri_root, OMP_NUM_THREADS="1")
    args = [PY, "-m", "fastreid_plugins.reproduce", "run", "svrn", "II", "--output-dir", out,
            "--config-file", "configs/demo/svrn.yml", "--timeout", "300", "--no-progress",
            *E2E_OPTS]
    row = {j.row.row: j.out_dir for j in runner.plan("svrn", "II", None, "configs/demo/svrn.yml",
                                                      E2E_OPTS, out)}
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # interrupt once the second row has written its first checkpoint
        assert _wait_for(os.path.join(row["scheme_a"], "last_checkpoint"), p, 400), \
            p.communicate(timeout=30)[0][-3000:]
        os.kill(p.pid, signal.SIGTERM)
        log = p.communicate(timeout=60)[0]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            _kill_mentioning(out)
    assert p.returncode == 130, log[-3000:]
    assert "svrn/II/baseline: done" in log
    assert not _processes_mentioning(row["scheme_a"])   # the row's trainer was ended
    first = os.path.getmtime(os.path.join(row["baseline"], "result.json"))
    result, status = runner.read_row_state(row["scheme_a"])
    assert result is None and status["status"] == "interrupted"
    assert not os.path.exists(row["scheme_b"])

    # again, in-process, with one more row whose override is bad: it fails, the others finish
    jobs = runner.plan("svrn", "II", None, "configs/demo/svrn.yml", E2E_OPTS, out)
    bad = Row("svrn", "II", "bad-override", "a row with a bad override",
              ("MODEL.SVRN.NO_SUCH_KEY", "1"))
    bad_dir = os.path.join(out, "svrn", "II", "bad-override", "x")
    jobs.insert(2, runner.RowJob(bad, bad_dir, "configs/demo/svrn.yml", list(E2E_OPTS)))
    os.environ["FASTREID_DATASETS"] = veri_root
    states = runner.run_rows(jobs, progress=False, timeout=300)
    assert states == {"svrn/II/baseline": "skipped", "svrn/II/scheme_a": "done",
                      "svrn/II/bad-override": "failed", "svrn/II/scheme_b": "done"}
    assert os.path.getmtime(os.path.join(row["baseline"], "result.json")) == first
    with open(os.path.join(row["scheme_a"], "run.log")) as f:
        runs = [ln for ln in f if ln.startswith("$ ")]
    assert len(runs) == 2 and "--resume" not in runs[0] and "--resume" in runs[1]
    _, status = runner.read_row_state(bad_dir)
    assert "NO_SUCH_KEY" in status["error"] and status["log_tail"]
    for r in row.values():
        res = json.load(open(os.path.join(r, "result.json")))
        assert set(res["results"]["VeRi"]) >= {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}
        assert res["dataset"] == "VeRi"

    p = _cli("report", "svrn", "II", "--output-dir", out, timeout=120)
    assert p.returncode == 0, p.stderr
    for r in get_table("svrn", "II").rows:
        line = next(ln for ln in p.stdout.splitlines() if ln.startswith(f"| `{r.row}`"))
        assert "| done; short run: not comparable |" in line
        assert f"| {r.paper['VeRi']['mAP']:.1f} |" in line
        assert f"| {r.paper['VeRi']['Rank-1']:.1f} |" in line
    for ext in ("md", "csv", "png"):
        assert os.path.isfile(os.path.join(out, "svrn", "II", f"report.{ext}"))


_SLEEPER_SCRIPT = r"""
import os, signal, sys, types
# the reproduce package alone, without the package's FastReID / torch import (as its command)
pkg = types.ModuleType("fastreid_plugins")
pkg.__path__ = [os.path.join(os.getcwd(), "fastreid_plugins")]
sys.modules["fastreid_plugins"] = pkg
from fastreid_plugins.reproduce import runner

def sleeper(cmd, env, log_path, timeout=None, cwd=None):
    tag = cmd[cmd.index("OUTPUT_DIR") + 1]
    return runner.subprocess_launcher(
        [sys.executable, "-c", "import time, sys; print('up', flush=True); time.sleep(120)", tag],
        env, log_path, timeout=timeout, cwd=cwd)

def stop(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, stop)
jobs = runner.plan("svrn", "V", None, "configs/demo/svrn.yml", [], sys.argv[1])
try:
    runner.run_rows(jobs, gpus=["0", "1"], gpus_per_row=1, launcher=sleeper, progress=False)
except KeyboardInterrupt:
    sys.exit(130)
"""


def _start_sleeper_runner(tmp_path):
    """A runner (its own process) of svrn/V on two GPU slots whose rows sleep 120 s; returns
    ``(process, output root, run.log paths of the first two rows)`` once both rows are up."""
    script = tmp_path / "run.py"
    script.write_text(_SLEEPER_SCRIPT)
    out = str(tmp_path / "out")
    p = subprocess.Popen([PY, str(script), out], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.time() + 120
    logs = []
    while time.time() < end:
        logs = [f for r in ("baseline", "no_csc")
                for f in glob.glob(os.path.join(out, "svrn", "V", r, "*", "run.log"))]
        if len(logs) == 2 and all("up" in open(f).read() for f in logs):
            break
        assert p.poll() is None, p.communicate()[0]
        time.sleep(0.2)
    return p, out, logs


def test_interrupting_side_by_side_rows_ends_their_processes_and_records_them(tmp_path):
    """SIGTERM while two rows run on two GPU slots: both rows' processes are ended, both rows
    are recorded as interrupted, no further row starts."""
    p, out, logs = _start_sleeper_runner(tmp_path)
    try:
        p.send_signal(signal.SIGTERM)
        output = p.communicate(timeout=60)[0]
        assert p.returncode == 130, output
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
            _kill_mentioning(out)
    assert not _processes_mentioning(out)
    for log in logs:
        _, status = runner.read_row_state(os.path.dirname(log))
        assert status["status"] == "interrupted", (log, status, output)
        assert runner._live_lock(os.path.dirname(log)) is None
    assert not os.path.exists(os.path.join(out, "svrn", "V", "vcc"))


def test_a_sigkilled_runner_takes_its_trainers_with_it_and_its_rows_read_interrupted(tmp_path):
    """SIGKILL (no handler runs): the rows' processes, in sessions of their own, die with the
    runner (PR_SET_PDEATHSIG); the rows' ``running`` status with the dead pid reads
    ``interrupted``; their stale locks do not stop the next runner."""
    p, out, logs = _start_sleeper_runner(tmp_path)
    try:
        assert len(_processes_mentioning(out)) >= 2   # the two sleeping rows
        lock = json.load(open(os.path.join(os.path.dirname(logs[0]), runner.LOCK_FILE)))
        assert lock["pid"] == p.pid and lock["host"] == socket.gethostname()
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        end = time.time() + 20
        while _processes_mentioning(out) and time.time() < end:
            time.sleep(0.2)
        assert not _processes_mentioning(out)
    finally:
        _kill_mentioning(out)
    for log in logs:
        d = os.path.dirname(log)
        assert runner.row_state(d) == f"interrupted (its runner, pid {p.pid}, is gone)"
        job = next(j for j in runner.plan("svrn", "V", None, "configs/demo/svrn.yml", [], out)
                   if j.out_dir == d)
        assert runner.decide(job)[0] == "start"   # the stale lock is not a live runner's


# --------------------------------------------------------------------------------------------
# issue 28: columns, folders, main tables, seeds, provenance, locks, command line, labels
# --------------------------------------------------------------------------------------------
def test_main_tables_hold_each_methods_own_rows_at_the_papers_precision(papers):
    """Every method's own row of its main comparison tables, on every dataset it has a paper
    config for, with the numbers typed here from the papers (an independent copy)."""
    want = {
        "mfgnet/main/mfgnet": {
            "VeRi": (77.15, 36.82, 96.72), "SmallVehicleID": (88.37, 68.32, 82.02),
            "MediumVehicleID": (84.70, 64.38, 78.69), "LargeVehicleID": (81.01, 60.03, 75.16),
            "VRIC": (84.86, 55.81, 79.56)},   # (mAP, mINP, Rank-1)
        "svrn/main/svrn": {"VeRi": (84.5, 97.2), "SmallVehicleID": (87.5,),
                           "MediumVehicleID": (84.6,), "LargeVehicleID": (None,),
                           "SmallVeRiWild": (85.5,), "MediumVeRiWild": (None,),
                           "LargeVeRiWild": (None,)},
        "svrn/main/baseline": {"VeRi": (80.8, 96.7), "SmallVehicleID": (82.9,),
                               "MediumVehicleID": (80.1,), "LargeVehicleID": (78.3,),
                               "SmallVeRiWild": (83.5,), "MediumVeRiWild": (79.0,),
                               "LargeVeRiWild": (74.6,)},
        "clip_senet/main/clip_senet": {
            "VeRi": (92.9, 98.7, 99.1), "SmallVeRiWild": (89.1, 97.9),
            "MediumVeRiWild": (85.2, 97.0), "LargeVeRiWild": (79.5, 95.4),
            "SmallVehicleID": (90.4, 98.7), "MediumVehicleID": (85.5, 96.5),
            "LargeVehicleID": (82.7, 94.8)},
        "clip_senet/main/baseline": {
            "VeRi": (86.7, 96.8, 97.9), "SmallVeRiWild": (84.9, 95.9),
            "MediumVeRiWild": (80.2, 94.8), "LargeVeRiWild": (72.9, 92.4),
            "SmallVehicleID": (83.9, 97.1), "MediumVehicleID": (79.8, 94.5),
            "LargeVehicleID": (77.6, 91.8)},
        "mbfn/main/mbfn": {"VeRi": (77.12, 96.30, 98.11), "SmallVehicleID": (None,) * 3,
                           "MediumVehicleID": (None,) * 3, "LargeVehicleID": (None,) * 3,
                           "VRIC": (None, None)},
    }
    for key, per in want.items():
        r = get_row(key)
        assert list(r.paper) == list(per), key
        for d, vals in per.items():
            assert tuple(r.paper[d].values()) == vals, (key, d)
    for m, rec in METHODS.items():
        t = get_table(m, "main")
        assert t.per_dataset and set(t.datasets) == set(rec.configs), m
        assert t.decimals == (2 if m in ("mfgnet", "mbfn") else 1)
    assert get_row("svrn/main/svrn").lost["LargeVehicleID/Rank-1"]
    assert "Table 7" in get_row("mbfn/main/mbfn").lost["SmallVehicleID/mAP"]


def test_columns_name_the_test_sets_that_fill_them():
    t = get_table("clip_senet", "main")
    assert t.column_of("VeRiViewpoint") == "VeRi" and t.column_of("VeRi") == "VeRi"
    assert t.column_of("SmallVehicleID") == "SmallVehicleID" and t.column_of("VRIC") is None
    assert get_table("mfgnet", "main").column_of("VRIC") == "VRIC"


def test_a_run_folder_is_keyed_by_config_overrides_opts_and_seed(tmp_path):
    root = str(tmp_path)
    a = runner.plan("svrn", "III", ["baseline"], "configs/demo/svrn.yml", [], root)[0]
    b = runner.plan("svrn", "III", ["baseline"], "./configs/../configs/demo/svrn.yml", [],
                    root)[0]
    c = runner.plan("svrn", "III", ["baseline"], os.path.join(ROOT, "configs/demo/svrn.yml"),
                    [], root)[0]
    assert a.out_dir == b.out_dir == c.out_dir and a.config_file == "configs/demo/svrn.yml"
    assert re.fullmatch(r"demo-svrn-[0-9a-f]{10}", os.path.basename(a.out_dir))
    assert os.path.dirname(a.out_dir) == os.path.join(root, "svrn", "III", "baseline")
    other_cfg = runner.plan("svrn", "III", ["baseline"], "configs/vehicleid/svrn_small.yml",
                            [], root)[0]
    by_dataset = runner.plan("svrn", "III", ["baseline"], None, [], root,
                             dataset="SmallVehicleID")[0]
    assert other_cfg.out_dir == by_dataset.out_dir
    assert os.path.basename(other_cfg.out_dir).startswith("vehicleid-svrn_small-")
    other_opts = runner.plan("svrn", "III", ["baseline"], "configs/demo/svrn.yml",
                             ["SOLVER.MAX_EPOCH", "2"], root)[0]
    seeds = runner.plan("svrn", "III", ["baseline"], "configs/demo/svrn.yml", [], root,
                        seeds=[0, 1])
    dirs = [a.out_dir, other_cfg.out_dir, other_opts.out_dir] + [j.out_dir for j in seeds]
    assert len(set(dirs)) == 5
    assert [os.path.basename(j.out_dir)[:16] for j in seeds] == ["demo-svrn-seed0-",
                                                                 "demo-svrn-seed1-"]
    assert seeds[1].run_opts == ["SEED", "1"] and seeds[0].name.endswith("[demo-svrn-seed0]")
    # a main table runs every dataset's paper config; an ablation table its first
    main = runner.plan("svrn", "main", ["svrn"], None, [], root)
    assert [j.config_file for j in main] == list(METHODS["svrn"].configs.values())
    assert len(runner.plan("svrn", "III", None, None, [], root)) == 4
    with pytest.raises(ConfigError, match=r"--dataset 'VRIC': svrn/III reports \['VeRi'"):
        runner.plan("svrn", "III", None, None, [], root, dataset="VRIC")
    with pytest.raises(ConfigError, match="SEED is among"):
        runner.plan("svrn", "III", None, None, ["SEED", "3"], root, seeds=[1])


def test_an_unfinished_run_of_another_command_is_not_resumed_but_named(tmp_path):
    job = _jobs(tmp_path, rows=["vcc"])[0]
    os.makedirs(job.out_dir)
    with open(os.path.join(job.out_dir, "last_checkpoint"), "w") as f:
        f.write("model_0001.pth")
    other = dict(job.settings, opts=["SOLVER.MAX_EPOCH", "5"])
    with open(os.path.join(job.out_dir, "row.json"), "w") as f:
        json.dump({"settings": other, "commands": []}, f)
    action, detail = runner.decide(job)
    assert action == "mismatch"
    assert "opts: ['SOLVER.MAX_EPOCH', '2'] now, ['SOLVER.MAX_EPOCH', '5'] in the folder" in detail
    assert "--restart" in detail
    fake = FakeLauncher()
    states = runner.run_rows([job], launcher=fake, progress=False)
    assert states == {"svrn/V/vcc": "mismatch"} and not fake.calls
    states = runner.run_rows(_jobs(tmp_path, rows=["vcc"]), launcher=fake, progress=False,
                             restart=True)
    assert states == {"svrn/V/vcc": "done"} and "--resume" not in fake.calls[0]["cmd"]
    info = json.load(open(os.path.join(job.out_dir, "row.json")))
    assert info["settings"] == job.settings and [c["action"] for c in info["commands"]] == \
        ["restart"]


def _prepare_states(tmp_path):
    """Folders of svrn/V in every state decide() knows; returns the jobs."""
    jobs = {j.row.row: j for j in _jobs(tmp_path)}
    runner.run_rows([jobs["baseline"], jobs["no_csc"], jobs["icc"]], launcher=FakeLauncher(),
                    progress=False)                                     # finished
    d = jobs["no_csc"].out_dir                                          # only results missing
    os.remove(os.path.join(d, "result.json"))
    d = jobs["icc"].out_dir                                             # evaluation missing
    os.remove(os.path.join(d, "result.json"))
    os.utime(os.path.join(d, "VeRi_results.json"), (time.time() - 60, time.time() - 60))
    os.makedirs(jobs["vcc"].out_dir)                                    # interrupted
    with open(os.path.join(jobs["vcc"].out_dir, "last_checkpoint"), "w") as f:
        f.write("model_0000.pth")
    os.makedirs(jobs["dcc"].out_dir)                                    # locked
    sleeper = _hold_lock(jobs["dcc"].out_dir)
    return list(jobs.values()), sleeper                                 # csc: not run


_LOCKER = r"""
import fcntl, json, os, socket, sys, time
fd = os.open(os.path.join(sys.argv[1], "runner.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started_at": "2026-01-01T00:00:00"}).encode())
print("locked", flush=True)
time.sleep(60)
"""


def _hold_lock(folder):
    """Another process holding ``folder``'s runner lock (as a runner does), once it holds it."""
    p = subprocess.Popen([PY, "-c", _LOCKER, folder], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_dry_run_prints_what_run_does_state_by_state(tmp_path):
    jobs, sleeper = _prepare_states(tmp_path)
    try:
        lines = runner.describe(jobs, [None])
        said = {ln.split(": ")[0][2:]: ln.split(": ")[1].split(" ")[0] for ln in lines
                if ln.startswith("# ")}
        assert said == {"svrn/V/baseline": "skip", "svrn/V/no_csc": "collect",
                        "svrn/V/vcc": "resume", "svrn/V/icc": "eval-only",
                        "svrn/V/dcc": "locked", "svrn/V/csc": "start"}
        assert f"pid {sleeper.pid} on {socket.gethostname()}" in next(
            ln for ln in lines if ln.startswith("# svrn/V/dcc"))
        printed = [ln for ln in lines if not ln.startswith("# ")]
        fake = FakeLauncher(seconds=0)
        states = runner.run_rows(_jobs(tmp_path), launcher=fake, progress=False)
        assert states == {"svrn/V/baseline": "skipped", "svrn/V/no_csc": "done",
                          "svrn/V/vcc": "done", "svrn/V/icc": "done", "svrn/V/dcc": "locked",
                          "svrn/V/csc": "done"}
        # the commands run are the commands printed, in order
        assert [" ".join(shlex.quote(c) for c in call["cmd"]) for call in fake.calls] == printed
        assert "--eval-only" in printed[1] and "--resume" in printed[0]
        # the CLI's --dry-run prints the same lines
        p = _cli("run", "svrn", "V", "--dry-run", "--output-dir", str(tmp_path),
                 "--config-file", "configs/demo/svrn.yml", "SOLVER.MAX_EPOCH", "2")
        assert p.returncode == 0 and "# svrn/V/baseline: skip (finished" in p.stdout
        # --restart: every folder with something in it starts over (a locked one stays locked)
        said = [ln.split(": ")[1].split(" ")[0] for ln in runner.describe(jobs, [None], True)
                if ln.startswith("# ")]
        assert said == ["restart"] * 4 + ["locked", "restart"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_second_runner_is_refused_naming_the_pid_and_a_dead_ones_lock_is_taken(tmp_path):
    job = _jobs(tmp_path, rows=["vcc"])[0]
    os.makedirs(job.out_dir)
    locker = _hold_lock(job.out_dir)
    lock = os.path.join(job.out_dir, runner.LOCK_FILE)
    try:
        lines = []
        states = runner.run_rows([job], launcher=FakeLauncher(), progress=False,
                                 echo=lines.append)
        assert states == {"svrn/V/vcc": "locked"}
        assert f"another runner holds it: pid {locker.pid} on {socket.gethostname()}, since " \
               "2026-01-01T00:00:00" in lines[0]
        p = _cli("run", "svrn", "V", "--rows", "vcc", "--output-dir", str(tmp_path),
                 "--config-file", "configs/demo/svrn.yml", "--no-progress",
                 "SOLVER.MAX_EPOCH", "2")
        assert p.returncode == 1 and f"pid {locker.pid}" in p.stdout
    finally:
        locker.kill()
        locker.wait()
    # its holder is gone (killed: no clean-up ran): the lock file is left, the lock is free
    assert json.load(open(lock))["pid"] == locker.pid
    states = runner.run_rows([job], launcher=FakeLauncher(), progress=False)
    assert states == {"svrn/V/vcc": "done"} and runner._live_lock(job.out_dir) is None
    assert open(lock).read() == ""   # released: emptied
    # a status 'running' whose runner pid is dead reads 'interrupted'
    with open(os.path.join(job.out_dir, "status.json"), "w") as f:
        json.dump({"status": "running", "pid": locker.pid, "host": socket.gethostname()}, f)
    os.remove(os.path.join(job.out_dir, "result.json"))
    assert runner.row_state(job.out_dir) == f"interrupted (its runner, pid {locker.pid}, is " \
                                            "gone)"


def test_report_fills_the_veri_column_from_veriviewpoint_whatever_finished_first(tmp_path):
    """CLIP-SENet's configs test on VeRiViewpoint; the paper's column is VeRi-776."""
    from fastreid_plugins.reproduce.report import markdown
    jobs = runner.plan("clip_senet", "table_v", ["groups_4", "groups_32"],
                       "configs/demo/clip_senet.yml", ["SOLVER.MAX_EPOCH", "1"], str(tmp_path))
    runner.run_rows(jobs, launcher=FakeLauncher(seconds=0), progress=False)
    text = markdown("clip_senet", "table_v", str(tmp_path))
    line = next(ln for ln in text.splitlines() if ln.startswith("| `groups_32`"))
    # mAP 80.0 vs 92.9, Rank-1 90.0 vs 98.7, Rank-5 95.0 vs 99.1
    assert "| VeRi | done; short run: not comparable | 80.0 | 92.9 | -12.9 | 90.0 | 98.7 | -8.7 " \
           "| 95.0 | 99.1 | -4.1 |" in line
    assert "| not run |" in next(ln for ln in text.splitlines() if ln.startswith("| `groups_8`"))


def test_report_of_a_main_table_is_one_line_per_dataset_at_the_papers_precision(tmp_path):
    from fastreid_plugins.reproduce.report import markdown, write_csv
    jobs = runner.plan("mfgnet", "main", None, None, [], str(tmp_path))
    assert len(jobs) == 5
    runner.run_rows(jobs, launcher=FakeLauncher(seconds=0, epochs=30), progress=False)
    text = markdown("mfgnet", "main", str(tmp_path))
    lines = [ln for ln in text.splitlines() if ln.startswith("| `mfgnet`")]
    assert [ln.split(" | ")[2] for ln in lines] == list(METHODS["mfgnet"].configs)
    # metrics in the report's order: mAP, Rank-1, mINP; ours 80 / 90 / 50; paper's precision
    assert lines[1].endswith("| 80.00 | 88.37 | -8.37 | 90.00 | 82.02 | +7.98 | 50.00 | 68.32 "
                             "| -18.32 |"), lines[1]
    assert "| 84.70 |" in lines[2]   # 84.70 stays 84.70
    # 30 epochs, as the VeRi paper config: the VeRi line is not labelled short by epochs (its
    # input, 64x64 in the fake, is smaller than the paper's 384x128)
    assert "input [64, 64], the paper config's [384, 128]" in text
    assert "of the paper config's 30 epochs" not in text
    assert "of the paper config's 40 epochs" in text   # VehicleID / VRIC: 40 epochs
    csv_path = write_csv(str(tmp_path / "r.csv"), "mfgnet", "main", str(tmp_path))
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 5 * 3 and rows[0]["comparable"].startswith("short run: not comparable")
    assert rows[3]["paper"] == "88.37" and rows[3]["dataset"] == "SmallVehicleID"


def test_seeds_give_each_value_the_mean_the_sample_sd_and_whether_the_paper_is_within(tmp_path):
    from fastreid_plugins.reproduce.report import gather, markdown, spread
    jobs = runner.plan("mfgnet", "table3", ["2_divisions"], "configs/demo/mfgnet.yml",
                       ["SOLVER.MAX_EPOCH", "1"], str(tmp_path), seeds=[0, 1, 5])
    states = runner.run_rows(jobs, launcher=FakeLauncher(seconds=0), progress=False)
    assert len(states) == 3 and set(states.values()) == {"done"}
    assert spread([1.0, 2.0, 6.0]) == (3.0, pytest.approx(math.sqrt(7.0)))
    _, metrics, lines = gather("mfgnet", "table3", str(tmp_path))
    line = next(ln for ln in lines if ln["row"].row == "2_divisions")
    v = line["values"]["mAP"]   # 80, 81, 85: mean 82, s.d. sqrt(7) = 2.6458
    assert v["seeds"] == [(0, 80.0), (1, 81.0), (5, 85.0)]
    assert v["mean"] == 82.0 and v["sd"] == pytest.approx(2.6457513)
    # paper 72.05: outside 82 +- 5.29; Rank-1 89, 85, 88 -> paper 92.60 outside too
    assert v["within"] is False and v["paper"] == 72.05
    text = markdown("mfgnet", "table3", str(tmp_path))
    assert "| 82.00 ± 2.65 (n=3) | 72.05 | +9.95 (paper outside) |" in text
    assert "seed 0: 80.00, seed 1: 81.00, seed 5: 85.00; mean 82.00, s.d. 2.65" in text
    assert "mean ± 2 sample s.d." in text


def test_the_charts_axis_spans_the_numbers_not_0_to_100():
    from fastreid_plugins.reproduce.report import _ylim
    # 68.2 .. 84.5: pad max(1, 0.15 * 16.3 = 2.445)
    assert _ylim([68.2, 84.5, 70.0]) == (pytest.approx(65.755), pytest.approx(86.945))
    assert _ylim([97.0, 97.4]) == (pytest.approx(96.0), pytest.approx(98.4))   # pad 1


def test_report_errors_name_what_is_there(tmp_path):
    p = _cli("report", "svrn", "II", "--output-dir", str(tmp_path), "--no-chart")
    assert p.returncode == 2 and "no run of svrn/II under" in p.stderr \
        and "it holds no runs at all" in p.stderr
    runner.run_rows(_jobs(tmp_path, rows=["vcc"]), launcher=FakeLauncher(seconds=0),
                    progress=False)
    p = _cli("report", "svrn", "II", "--output-dir", str(tmp_path), "--no-chart")
    assert p.returncode == 2 and "it holds runs of svrn/V" in p.stderr
    p = _cli("report", "svrn", "V", "--output-dir", str(tmp_path), "--dataset", "Foo",
             "--no-chart")
    assert p.returncode == 2 and "--dataset 'Foo': svrn/V reports ['VeRi']" in p.stderr


def test_command_line_overrides_are_never_row_names_and_bad_options_are_errors(tmp_path):
    p = _cli("run", "svrn", "II", "--dry-run", "--output-dir", str(tmp_path), "--rows",
             "baseline", "SOLVER.MAX_EPOCH", "2")
    assert p.returncode == 0, p.stderr
    cmds = [ln for ln in p.stdout.splitlines() if not ln.startswith("#")]
    assert len(cmds) == 1 and "SOLVER.MAX_EPOCH 2 OUTPUT_DIR" in cmds[0]
    p = _cli("run", "svrn", "II", "--dry-run", "--output-dir", str(tmp_path), "--rows",
             "baseline,scheme_a", "--", "MODEL.SVRN.GRID", "-4")
    cmds = [ln for ln in p.stdout.splitlines() if not ln.startswith("#")]
    assert p.returncode == 0 and len(cmds) == 2 and "MODEL.SVRN.GRID -4 OUTPUT_DIR" in cmds[1]
    for bad, msg in ((["-x", "1"], "unrecognized arguments: -x"),
                     (["--timeout", "-5"], "'-5': must be a positive number of seconds"),
                     (["--timeout", "0"], "'0': must be a positive number of seconds"),
                     (["--seeds", "0,a"], "give integer seeds")):
        p = _cli("run", "svrn", "II", "--dry-run", *bad)
        assert p.returncode == 2 and msg in p.stderr, (bad, p.stderr)
    with pytest.raises(ConfigError, match="positive"):
        runner.run_rows([], timeout=-5, progress=False)
    for cmd in ("run", "report", "list"):
        p = _cli(cmd, "--help")
        assert p.returncode == 0 and "examples:" in p.stdout, cmd
    assert "[--] [KEY VALUE ...]" in _cli("run", "--help").stdout
    top = _cli("--help").stdout
    assert "train + evaluate a table's rows" in top and "beside the paper's" in top


def test_guessed_configs_are_labelled_in_list_and_report_unless_the_numbers_are_ours(tmp_path):
    guessed = {r.key for r in all_rows() if r.guessed}
    assert {"svrn/III/2_stages", "svrn/III/4_stages-ours", "mbfn/table4/b"} <= guessed
    p = _cli("list", "svrn", "III")
    assert "svrn/III/2_stages  [guessed config]" in p.stdout
    assert "svrn/III/4_stages-ours  [paper's numbers, our config]  [guessed config]" in p.stdout
    assert "[guessed config]" not in _cli("list", "mbfn", "table4").stdout   # no paper numbers
    p = _cli("list")
    assert "a row -ours of a paper table (svrn/III/4_stages-ours) has the paper's numbers" \
        in p.stdout
    from fastreid_plugins.reproduce.report import markdown
    jobs = runner.plan("svrn", "III", ["2_stages", "3_stages"], "configs/demo/svrn.yml", [],
                       str(tmp_path))
    runner.run_rows(jobs, launcher=FakeLauncher(seconds=0), progress=False)
    text = markdown("svrn", "III", str(tmp_path))
    assert "| `2_stages` | SVRN+2 stages [guessed config] |" in text
    assert "| `3_stages` | SVRN+3 stages |" in text
    assert "- `2_stages`: guessed config: START_BLOCKS [3]" in text


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_e2e_each_methods_main_row_on_the_sample_is_reported_beside_the_papers(
        method, veri_root, tmp_path):
    """``run <method> main --rows <method>`` with the method's demo config for one epoch on the
    57-image sample, then ``report``: the VeRi-776 line holds our number (from the run's
    ``result.json``, whichever VeRi test set the config names) beside the paper's, labelled a
    short run. About 20-25 s per method on the loaded 2-core machine."""
    out = str(tmp_path)
    env = dict(os.environ, PYTHONPATH=ROOT, FASTREID_DATASETS=veri_root, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [PY, "-m", "fastreid_plugins.reproduce", "run", method, "main", "--rows", method,
         "--config-file", METHODS[method].demo_config, "--output-dir", out, "--timeout", "240",
         "--no-progress", "SOLVER.MAX_EPOCH", "1"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    [d] = runner.run_dirs(out, get_row(f"{method}/main/{method}"))
    result = json.load(open(os.path.join(d, "result.json")))
    assert result["column"] == "VeRi" and result["dataset"] in ("VeRi", "VeRiViewpoint")
    assert result["provenance"]["epochs"] == 1 and result["provenance"]["weights_sha256"]
    p = _cli("report", method, "main", "--output-dir", out, "--no-chart", timeout=120)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith(f"| `{method}` |")
                and "| VeRi |" in ln)
    dec = get_table(method, "main").decimals
    ours = result["results"][result["dataset"]]["mAP"]
    paper = get_row(f"{method}/main/{method}").paper["VeRi"]["mAP"]
    assert "| done; short run: not comparable |" in line
    assert f"| {ours:.{dec}f} | {paper:.{dec}f} | {ours - paper:+.{dec}f} |" in line, line
