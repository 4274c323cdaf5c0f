"""Helpers for end-to-end tests: build a config, train in-process, evaluate."""

import logging
import os
import signal

import fastreid_plugins
from fastreid_plugins.config import get_cfg
from fastreid_plugins.engine import PluginTrainer
from fastreid_plugins.seeding import seed_all

fastreid_plugins.activate()  # patches + registration (conftest does too: helpers run alone)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_sigint():
    """``preexec_fn`` of a child that a test interrupts with SIGINT: Ctrl-C at its default
    (Python raises KeyboardInterrupt) even where the test run ignores it, as every command started
    in the background by a non-interactive shell does (``nohup bash -c '... make test' &``): an
    ignored SIGINT stays ignored across exec, and Python then installs no handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_cfg(config_file, opts=(), add_fns=()):
    """Frozen config from a repo-relative yml plus ``opts`` (CPU device, no pretrain download)."""
    cfg = get_cfg(*add_fns)
    cfg.merge_from_file(os.path.join(ROOT, config_file))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def seed_everything(seed=0):
    seed_all(seed)


def evaluate(cfg, model):
    """Run the plugins' evaluator over ``cfg.DATASETS.TESTS[0]``; returns the metrics dict."""
    res = PluginTrainer.test(cfg, model)
    return dict(res)


def train(cfg):
    """Train with PluginTrainer; returns ``(trainer, final_metrics, loss_history)``.

    ``loss_history`` is the list of ``total_loss`` values the trainer logged per iteration.
    """
    logging.getLogger("fastreid").setLevel(logging.WARNING)
    trainer = PluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    hist = trainer.storage.history("total_loss").values()
    losses = [v for v, _ in hist]
    return trainer, dict(results), losses
