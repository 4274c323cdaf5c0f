"""A newcomer's commands: every user error the project names ends in one short block.

Each case runs the real command in a subprocess (with a timeout) and checks the short form: exit
status 2, ``Error: ...`` naming the culprit (file / key / value) on stderr, no traceback on the
console, the message printed exactly once (stdout and stderr together). The cases fail before or
at the first training iteration, so each costs an interpreter start and a model build.
"""

import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

DEMO = os.path.join(ROOT, "configs", "demo")
BAGTRICKS = os.path.join(DEMO, "bagtricks_r18.yml")
MFGNET = os.path.join(DEMO, "mfgnet.yml")
TIMEOUT = 600


def run(args, datasets=None, env=None, cwd=ROOT):
    """Run ``python ARGS`` like a user; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    FASTREID_PLUGINS_THREADS="1", OMP_NUM_THREADS="1")
    full_env.pop("FASTREID_PLUGINS_DEBUG", None)
    full_env.pop("FASTREID_PLUGINS_VERBOSE", None)
    if datasets is not None:
        full_env["FASTREID_DATASETS"] = datasets
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def train_net(project, *args):
    return [os.path.join(ROOT, "projects", project, "train_net.py"), *args]


def tool(name, *args):
    return ["-m", f"fastreid_plugins.tools.{name}", *args]


def assert_short_error(res, *culprits, error_type=None):
    """Exit 2, one ``Error:`` block naming every culprit, no traceback, nothing printed twice."""
    out = res.stdout + res.stderr
    assert res.returncode == 2, f"rc={res.returncode}\n{out[-4000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    assert "Traceback" not in res.stdout, res.stdout[-4000:]
    starts = [i for i, line in enumerate(res.stderr.splitlines()) if line.startswith("Error: ")]
    assert len(starts) == 1, res.stderr
    block = "\n".join(res.stderr.splitlines()[starts[0]:])
    first = block.splitlines()[0]
    assert out.count(first) == 1, f"printed more than once: {first!r}\n{out[-4000:]}"
    for c in culprits:
        assert c in block, f"{c!r} not in the error block:\n{block}"
    if error_type:
        assert f"({error_type};" in block, block
    return block


# ------------------------------------------------------------------------------------ config
def test_config_key_typo_names_the_real_key(tmp_path):
    res = run(train_net("MBFN", "--config-file", os.path.join(DEMO, "mbfn.yml"),
                        "MODEL.MBFN.NUM_PART", "3", "OUTPUT_DIR", str(tmp_path)))
    block = assert_short_error(res, "MODEL.MBFN.NUM_PART", "MODEL.MBFN.LOCAL1.NUM_PARTS",
                               error_type="ConfigError")
    # the suffix match comes first (the yacs message "Non-existent key" gave no hint)
    assert block.index("MODEL.MBFN.LOCAL1.NUM_PARTS") < block.index("MODEL.MBFN.PART_DIM")


def test_config_key_typo_in_a_config_file(tmp_path):
    cfg = tmp_path / "typo.yml"
    cfg.write_text(f"_BASE_: {BAGTRICKS}\nSOLVER:\n  IMS_PER_BACH: 8\n")
    res = run(train_net("MFGNet", "--config-file", str(cfg), "OUTPUT_DIR", str(tmp_path)))
    assert_short_error(res, "SOLVER.IMS_PER_BACH", "SOLVER.IMS_PER_BATCH", str(cfg))


def test_another_methods_config_names_its_script(tmp_path):
    """configs/demo/svrn.yml given to MFG-Net's train_net.py: the unknown MODEL.SVRN node is
    SVRN's, so the error names projects/SVRN/train_net.py (issue 27)."""
    res = run(train_net("MFGNet", "--config-file", os.path.join(DEMO, "svrn.yml"),
                        "OUTPUT_DIR", str(tmp_path)))
    assert_short_error(res, "MODEL.SVRN", "projects/SVRN/train_net.py", error_type="ConfigError")


def test_config_path_relative_to_the_repo_is_suggested_from_another_folder(veri_root, tmp_path):
    """extract run from another folder with the README's relative config path: the error
    suggests the path that exists (in the repository), not the one that failed (issue 27)."""
    images = os.path.join(veri_root, "veri", "image_query")
    res = run(tool("extract", "--config-file", "configs/demo/mfgnet.yml", "--images", images,
                   "--out", str(tmp_path / "f"), "MODEL.WEIGHTS", "x.pth"), cwd=str(tmp_path))
    block = assert_short_error(res, "'configs/demo/mfgnet.yml'", str(tmp_path),
                               error_type="ConfigFileNotFoundError")
    assert f"--config-file {MFGNET}" in block


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "no_such.yml")
    res = run(train_net("MFGNet", "--config-file", missing))
    assert_short_error(res, missing, error_type="ConfigFileNotFoundError")
    res = run(tool("visualize", "--config-file", missing, "MODEL.WEIGHTS", "x.pth"))
    assert_short_error(res, missing)


def test_visualize_option_after_the_overrides(tmp_path):
    res = run(tool("visualize", "--config-file", BAGTRICKS, "MODEL.WEIGHTS", "x.pth",
                   "--mode", "worst"))
    assert_short_error(res, "'--mode'", "options must come before KEY VALUE overrides")


# ------------------------------------------------------------------------------- data / model
def test_dataset_not_found(tmp_path):
    empty = tmp_path / "nodata"
    empty.mkdir()
    out = tmp_path / "run"
    res = run(train_net("MFGNet", "--config-file", MFGNET, "OUTPUT_DIR", str(out)),
              datasets=str(empty))
    block = assert_short_error(res, str(empty / "veri"), error_type="DatasetNotFoundError")
    # the traceback is kept in the run's log file, which the block names
    assert str(out / "log.txt") in block
    assert "Traceback" in (out / "log.txt").read_text()


def test_batch_too_large_for_the_identities(veri_root, tmp_path):
    res = run(train_net("MFGNet", "--config-file", MFGNET, "SOLVER.IMS_PER_BATCH", "32",
                        "OUTPUT_DIR", str(tmp_path)), datasets=veri_root)
    assert_short_error(res, "SOLVER.IMS_PER_BATCH", "32 / 4 = 8", "has 4",
                       error_type="ConfigError")


def test_pretrained_weights_not_available_offline(veri_root, tmp_path):
    res = run(train_net("MFGNet", "--config-file", BAGTRICKS, "MODEL.BACKBONE.PRETRAIN", "True",
                        "SOLVER.IMS_PER_BATCH", "8", "OUTPUT_DIR", str(tmp_path / "run")),
              datasets=veri_root, env={"FASTREID_PLUGINS_OFFLINE": "1",
                                       "TORCH_HOME": str(tmp_path / "torch")})
    assert_short_error(res, "resnet18", "MODEL.BACKBONE.PRETRAIN_PATH",
                       error_type="WeightsNotAvailableError")


def test_unreadable_image(veri_root, tmp_path):
    """Every training image corrupt (names intact): the first batch fails on one of them."""
    src = os.path.join(veri_root, "veri")
    veri = tmp_path / "data" / "veri"
    (veri / "image_train").mkdir(parents=True)
    for d in ("image_query", "image_test"):
        os.symlink(os.path.join(src, d), veri / d)
    for f in sorted(os.listdir(os.path.join(src, "image_train"))):
        (veri / "image_train" / f).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    res = run(train_net("MFGNet", "--config-file", MFGNET, "OUTPUT_DIR", str(tmp_path / "run")),
              datasets=str(tmp_path / "data"))
    assert_short_error(res, "Cannot read image", str(veri / "image_train"),
                       error_type="ImageReadError")


def test_eval_only_without_model_weights(tmp_path):
    res = run(train_net("MFGNet", "--config-file", MFGNET, "--eval-only",
                        "OUTPUT_DIR", str(tmp_path)))
    assert_short_error(res, "MODEL.WEIGHTS")
    res = run(train_net("MFGNet", "--config-file", MFGNET, "--eval-only", "OUTPUT_DIR",
                        str(tmp_path), "MODEL.WEIGHTS", str(tmp_path / "nope.pth")))
    assert_short_error(res, str(tmp_path / "nope.pth"))
    res = run(tool("visualize", "--config-file", BAGTRICKS, "--output", str(tmp_path / "v")))
    assert_short_error(res, "MODEL.WEIGHTS is empty")


def test_debug_flag_shows_the_traceback(tmp_path):
    res = run(train_net("MFGNet", "--config-file", str(tmp_path / "no.yml"), "--debug"))
    assert res.returncode == 1 and "Traceback" in res.stderr
    assert "ConfigFileNotFoundError" in res.stderr


def test_ddp_worker_error_reaches_the_main_process_once(tmp_path):
    empty = tmp_path / "nodata"
    empty.mkdir()
    res = run(train_net("MFGNet", "--config-file", MFGNET, "--num-gpus", "2",
                        "OUTPUT_DIR", str(tmp_path / "run")), datasets=str(empty))
    block = assert_short_error(res, str(empty / "veri"), "(in process ",
                               error_type="DatasetNotFoundError")
    assert "process 0 of 2" in block or "process 1 of 2" in block
    if not torch.cuda.is_available():  # the header says the run fell back to gloo on the CPU
        assert "--num-gpus 2 but 0 CUDA GPU(s) available" in res.stdout
        assert "gloo" in res.stdout


# --------------------------------------------------------------------------- strip_checkpoint
def test_strip_checkpoint_bad_input(tmp_path):
    missing = str(tmp_path / "none.pth")
    assert_short_error(run(tool("strip_checkpoint", missing, str(tmp_path / "o.pth"))), missing)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    res = run(tool("strip_checkpoint", str(text), str(tmp_path / "o.pth")))
    assert_short_error(res, str(text), error_type="CorruptCheckpointError")
    assert not (tmp_path / "o.pth").exists()


# ------------------------------------------------------------------------------------ import
@pytest.mark.parametrize("missing,says", [("torch", "needs PyTorch"),
                                          ("fastreid", "needs FastReID")])
def test_import_error_names_the_missing_package_and_interpreter(tmp_path, missing, says):
    """A module named ``missing`` that fails to import shadows the installed one."""
    (tmp_path / f"{missing}.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{missing}'\", name='{missing}')\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    # importing the package imports neither (the front door); activating it does
    assert run(["-c", "import fastreid_plugins"], env=env, cwd=str(tmp_path)).returncode == 0
    res = run(["-c", "import fastreid_plugins; fastreid_plugins.activate()"], env=env,
              cwd=str(tmp_path))
    assert res.returncode == 1
    assert says in res.stderr and sys.executable in res.stderr, res.stderr
    other = "needs FastReID" if missing == "torch" else "needs PyTorch"
    assert other not in res.stderr
    assert "source .venv/bin/activate" in res.stderr


# ------------------------------------------------------------------------- console and log.txt
def test_console_header_and_full_config_only_in_log(veri_root, tmp_path):
    """An --eval-only run: the console shows the header and the metrics; the environment, the
    full config and the model are in OUTPUT_DIR/log.txt only."""
    from fastreid.modeling import build_model

    from fastreid_plugins.tools import build_tool_cfg

    cfg = build_tool_cfg(BAGTRICKS, ["MODEL.HEADS.NUM_CLASSES", "4"])
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    out = tmp_path / "run"
    res = run(train_net("MFGNet", "--config-file", BAGTRICKS, "--eval-only", "OUTPUT_DIR",
                        str(out), "MODEL.WEIGHTS", str(weights), "MODEL.HEADS.NUM_CLASSES", "4"),
              datasets=veri_root)
    assert res.returncode == 0, res.stderr[-3000:]
    console = res.stdout
    for line in ("FastReID ", "Method: Baseline, config: " + BAGTRICKS,
                 f"under {os.path.abspath(veri_root)} (FASTREID_DATASETS)",
                 "Device: cpu", "1 process, no process group", f"Output: {out}",
                 "Evaluation results"):
        assert line in console, f"{line!r} not on the console:\n{console}"
    from fastreid_plugins.engine import fastreid_versions
    dist, own = fastreid_versions()
    if dist and dist != own:  # FastReID 1.4.0 says "1.3": both are printed
        assert f"FastReID {dist} (the package reports itself as {own})" in console
    log = (out / "log.txt").read_text()
    for quiet in ("Running with full config:", "Environment info:", "Model:\n"):
        assert quiet not in console, quiet
        assert quiet in log, quiet
    assert len(console.splitlines()) < 60, console


# ------------------------------------------------------------------------------------- demo
def test_demo_knows_when_its_number_is_a_fitting_check(veri_root, tmp_path):
    """On the 57-image sample the training images are the query + gallery images (the demo says
    'fitting check' and adds the held-out-camera run); a dataset with its own test images is not."""
    from fastreid_plugins.tools import demo

    assert demo._train_is_test(veri_root)
    other = tmp_path / "veri"
    for d in ("image_train", "image_query", "image_test"):
        (other / d).mkdir(parents=True)
    (other / "image_train" / "0001_c001_00000001_0.jpg").write_bytes(b"x")
    (other / "image_query" / "0002_c001_00000001_0.jpg").write_bytes(b"x")
    assert not demo._train_is_test(str(tmp_path))
    assert os.path.isfile(demo.HELDOUT_SCRIPT)
    # the printed commands use the interpreter that runs (e.g. .venv/bin/python), not `python`
    assert demo.interpreter() in (os.path.relpath(sys.executable), sys.executable)


# ------------------------------------------------------ demo: a wrong path never trains (issue 27)
@pytest.mark.parametrize("layout", ["missing", "no_veri"])
def test_demo_with_a_given_path_without_veri_is_an_error(tmp_path, layout):
    """An explicitly given FASTREID_DATASETS without a VeRi layout stops before any training,
    naming the path and the folders expected (it used to train on synthetic data silently)."""
    given = tmp_path / "datasets"
    if layout == "no_veri":
        (given / "veri" / "image_train").mkdir(parents=True)
    res = run(tool("demo"), datasets=str(given), cwd=str(tmp_path))
    block = assert_short_error(res, str(given), "image_query", "unset FASTREID_DATASETS",
                               error_type="DatasetNotFoundError")
    assert ("does not exist" in block) == (layout == "missing")
    assert not (tmp_path / "logs").exists()


def test_demo_falls_back_to_synthetic_only_without_a_given_path(tmp_path, monkeypatch):
    from fastreid_plugins.tools import demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "REPO", str(tmp_path / "repo"))  # no ../shared/datasets beside it
    root, why = demo.find_dataset(None)
    assert root is None and "FASTREID_DATASETS is not set" in why
    assert demo.find_dataset("")[0] is None
    shared = tmp_path / "shared" / "datasets" / "veri"
    for d in demo.VERI_DIRS:
        (shared / d).mkdir(parents=True)
    root, why = demo.find_dataset(None)
    assert root == str(tmp_path / "shared" / "datasets") and "unset" in why


def test_demo_synthetic_run_never_replaces_a_real_checkpoint(tmp_path):
    from fastreid_plugins.errors import ConfigError
    from fastreid_plugins.tools import demo

    real = tmp_path / "real"
    real.mkdir()
    (real / "model_final.pth").write_bytes(b"real")
    with pytest.raises(ConfigError, match="trained on real data"):
        demo._check_output_dir(str(real), synthetic=True)
    demo._check_output_dir(str(real), synthetic=False)  # a real run may retrain its own folder
    syn = tmp_path / "syn"
    demo._check_output_dir(str(syn), synthetic=True)
    (syn / "model_final.pth").write_bytes(b"synthetic")
    demo._check_output_dir(str(syn), synthetic=True)  # marked: a synthetic run may replace it
    assert (syn / demo.SYNTHETIC_MARK).is_file()
    assert os.path.dirname(demo.REAL_OUTPUT) != demo.SYNTHETIC_DIR


def test_demo_heldout_progress_shows_every_tenth_epoch_and_warnings():
    import logging

    from fastreid_plugins.tools import demo

    f = demo._HeldoutProgress(epochs=25, every=10)

    def rec(msg, level=logging.INFO):
        return logging.LogRecord("fastreid.utils.events", level, __file__, 1, msg, (), None)

    shown = []
    for e in [*range(25), 24]:  # 0-based; FastReID writes the last epoch's line twice
        r = rec(f" eta: 0:00:{25 - e:02d}  epoch/iter: {e}/{e}  total_loss: 1.0  lr: 3.00e-04")
        if f.filter(r):
            shown.append(r.getMessage())
    assert [s.split(" (")[0] for s in shown] == [
        "held-out run: epoch 10/25", "held-out run: epoch 20/25", "held-out run: epoch 25/25"]
    assert "eta 0:00:16" in shown[0]
    assert not f.filter(rec("Starting training from epoch 0"))
    assert f.filter(rec("something is off", logging.WARNING))


def test_mismatched_weights_name_the_method_they_are_from(tmp_path):
    """A checkpoint whose run config (config.yaml beside it, or the config a weights-only file
    carries) is another method's: the error names that method and its script (issue 27)."""
    from torch import nn

    from fastreid_plugins.engine import checkpoint_method, load_model_weights
    from fastreid_plugins.errors import WeightsMismatchError

    run_dir = tmp_path / "svrn_run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("MODEL:\n  BACKBONE:\n    DEPTH: 18x\n"
                                         "  META_ARCHITECTURE: SVRN\n")
    path = str(run_dir / "model_final.pth")
    torch.save({"model": {"svrn.head.weight": torch.zeros(2, 2)}}, path)
    assert checkpoint_method(path) == "SVRN"
    with pytest.raises(WeightsMismatchError) as e:
        load_model_weights(nn.Linear(2, 2), path)
    msg = str(e.value)
    assert "trained for SVRN" in msg and "projects/SVRN/train_net.py" in msg
    # a weights-only file carries its config; no config anywhere: the general advice
    alone = tmp_path / "w.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "config": "MODEL:\n  META_ARCHITECTURE: MBFN\n"},
               alone)
    assert checkpoint_method(str(alone)) == "MBFN"
    (tmp_path / "x").mkdir()
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "x" / "m.pth")
    with pytest.raises(WeightsMismatchError, match="--config-file"):
        load_model_weights(nn.Linear(2, 2), str(tmp_path / "x" / "m.pth"))


# ------------------------------------------------------------------- Ctrl-C (issue 27)
def test_ctrl_c_is_one_line_with_the_resume_command(capsys, monkeypatch):
    """run_cli turns Ctrl-C into one line and exit 130; a training interrupt that wrote a
    checkpoint adds the same command with --resume (before the KEY VALUE overrides, which
    FastReID's parser takes to the end of the line)."""
    from fastreid_plugins.checkpoint import TrainingInterrupted
    from fastreid_plugins.cli import EXIT_INTERRUPTED, resume_command, run_cli

    def plain(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        run_cli(plain, [])
    assert e.value.code == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "Interrupted (Ctrl-C)\n"

    argv = ["--config-file", "configs/demo/mfgnet.yml", "OUTPUT_DIR", "logs/x y"]

    def training(argv):
        raise TrainingInterrupted("Interrupted during epoch 2/8; saved the checkpoint of epoch 1: "
                                  "logs/x y/model_0000.pth", "logs/x y/model_0000.pth")

    monkeypatch.setattr(sys, "argv", ["projects/MFGNet/train_net.py", *argv])
    monkeypatch.setitem(sys.modules, "__main__", type(sys)("__main__"))  # a script, not -m
    monkeypatch.setenv("FASTREID_DATASETS", "../shared/datasets")
    with pytest.raises(SystemExit):
        run_cli(training, argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Interrupted during epoch 2/8")
    cmd = resume_command(argv, "../shared/datasets")
    assert err.endswith(f"; resume with: {cmd}\n")
    assert cmd.endswith("projects/MFGNet/train_net.py --resume --config-file "
                        "configs/demo/mfgnet.yml OUTPUT_DIR 'logs/x y'")
    assert cmd.startswith("FASTREID_DATASETS=../shared/datasets ")
    assert resume_command(["--resume", *argv]).count("--resume") == 1
