"""``python -m fastreid_plugins.reproduce {list,run,report}``: the papers' ablation tables, row by
row, beside the paper's numbers.

    list [METHOD [TABLE]]        methods, tables, rows, overrides and the paper's numbers
    run METHOD TABLE [--rows R1,R2] [--config-file BASE | --dataset NAME] [--seeds 0,1,2]
        [--gpus 0,1 --gpus-per-row 1] [--output-dir DIR] [--timeout S] [--restart] [--dry-run]
        [KEY VALUE ...]
    report METHOD TABLE [--output-dir DIR] [--dataset NAME] [--no-chart]

This process never imports torch or FastReID (``fastreid_plugins/__init__`` skips them for this
command): each row runs as a subprocess of its method's ``train_net.py``
(:attr:`fastreid_plugins.method.Method.train_script`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from typing import Any, Callable, Optional, Sequence

from ..errors import UserError
from ..method import METHODS
from .registry import get_table, table_configs, tables

DEFAULT_OUTPUT = os.path.join("logs", "reproduce")


def _numbers(row):
    parts = []
    for d, ms in row.paper.items():
        vals = ", ".join(f"{m} {'lost' if v is None else v}" for m, v in ms.items())
        parts.append(f"{d}: {vals}")
    return "; ".join(parts) if parts else "none"


def cmd_list(args: argparse.Namespace, out: Callable[[str], Any] = print) -> int:
    if args.method is None:
        for m in METHODS.values():
            out(f"{m.key}  ({m.name}, {m.project})")
            for t in m.tables:
                out(f"  {t.table:<12} {len(t.rows):>2} rows  {t.title[:90]}")
        out("\n`list METHOD` for the rows, `list METHOD TABLE` for overrides and paper numbers. "
            "-ours: a table -ours (extra-ours) is our own grid, without paper numbers; a row "
            "-ours of a paper table (svrn/III/4_stages-ours) has the paper's numbers and a "
            "config that is our guess. [guessed config]: the paper does not give the row's "
            "overrides; ours are a guess.")
        return 0
    if args.table is None:
        for t in tables(args.method):
            out(f"{t.key}  {t.title}")
            out(f"  configs: {', '.join(f'{d}: {c}' for d, c in table_configs(t).items())}")
            for r in t.rows:
                out(f"  {r.row:<20} \"{r.label}\"{_guess_tag(r)}  paper: {_numbers(r)}")
        return 0
    t = get_table(args.method, args.table)
    configs = table_configs(t)
    out(f"{t.key}  {t.title}")
    out(f"  source: {t.source}; paper configs: "
        + ", ".join(f"{d}: {c}" for d, c in configs.items()))
    out(f"  one row on the paper's hardware: {t.cost}")
    out(f"  run: python -m fastreid_plugins.reproduce run {t.method} {t.table}"
        + ("  (every dataset, one run each)" if t.per_dataset else
           "" if len(configs) == 1 else "  (other datasets: --dataset "
           + " | ".join(list(configs)[1:]) + ")"))
    for r in t.rows:
        tag = ("  [ours: config and numbers]" if r.ours and not r.numbers() else
               "  [paper's numbers, our config]" if r.ours else "")
        out(f"\n  {r.key}{tag}{_guess_tag(r)}")
        out(f"    paper's label: \"{r.label}\" ({r.source})")
        out(f"    overrides: {' '.join(shlex.quote(o) for o in r.overrides) or '(none)'}")
        out(f"    paper: {_numbers(r)}")
        for k, v in r.lost.items():
            out(f"    lost ({k}): {v}")
        for d in r.deltas:
            out(f"    text: {r.row} - {d.other} = {d.value:+.2f} {d.metric} on {d.dataset}")
        if r.ambiguous:
            out(f"    ambiguous: {r.ambiguous}")
        if r.note:
            out(f"    note: {r.note}")
        if r.guessed and r.numbers():
            out(f"    guessed config: {r.guessed}")
    return 0


def _guess_tag(row) -> str:
    """`` [guessed config]`` for a row with the paper's numbers whose overrides are our guess."""
    return "  [guessed config]" if row.guessed and row.numbers() else ""


def cmd_run(args: argparse.Namespace, out: Callable[[str], Any] = print) -> int:
    from .runner import describe, plan, run_rows, slots

    gpus = [g for g in (args.gpus or "").split(",") if g.strip()]
    slot_list = slots(gpus, args.gpus_per_row)
    jobs = plan(args.method, args.table, args.rows, args.config_file, args.opts,
                args.output_dir, repo=args.repo, seeds=args.seeds, dataset=args.dataset)
    if args.dry_run:
        for line in describe(jobs, slot_list, restart=args.restart, repo=args.repo):
            out(line)
        return 0
    out(f"{len(jobs)} runs of {args.method}/{args.table}"
        + (f" on GPU groups {[','.join(s) for s in slot_list]}" if slot_list != [None] else
           " (one after another)"))
    states = run_rows(jobs, gpus=gpus, gpus_per_row=args.gpus_per_row,
                      timeout=args.timeout, progress=not args.no_progress,
                      repo=args.repo, echo=out, restart=args.restart)
    failed = [k for k, s in states.items() if s in ("failed", "conflict", "mismatch", "locked")]
    out(f"done: {sum(s in ('done', 'skipped') for s in states.values())}/{len(jobs)} runs"
        + (f"; not done: {', '.join(failed)} (see the lines above, status.json and run.log in "
           "each run's folder)" if failed else "")
        + f"; report: python -m fastreid_plugins.reproduce report {args.method} {args.table}"
        + ("" if args.output_dir is None else f" --output-dir {args.output_dir}"))
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace, out: Callable[[str], Any] = print) -> int:
    from .report import write_report
    from .runner import repo_root

    repo = args.repo or repo_root()
    root = args.output_dir or os.path.join(repo, DEFAULT_OUTPUT)
    get_table(args.method, args.table)
    text, paths = write_report(args.method, args.table, root, args.dataset,
                               chart=not args.no_chart, repo=repo)
    out(text)
    out("written: " + ", ".join(paths))
    return 0


def _comma_list(text: str) -> list:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list, e.g. a,b")
    return items


def _seed_list(text: str) -> list:
    try:
        return [int(x) for x in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integer seeds, e.g. 0,1,2") from None


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return v


_RUN_HELP = """Train and evaluate a table's rows, each an ordinary run of its project's train_net.py
in its own folder (<output-dir>/<method>/<table>/<row>/<config>[-seed<N>]-<hash>): a run with
another config, other overrides or another seed never shares a folder, so one --output-dir holds
every dataset. KEY VALUE pairs (after the options, or after --) override the config for every row.
A table `main` runs every dataset's paper config."""
_RUN_EXAMPLES = """examples:
  python -m fastreid_plugins.reproduce run svrn III
  python -m fastreid_plugins.reproduce run svrn main --rows svrn --dataset SmallVehicleID
  python -m fastreid_plugins.reproduce run svrn II --rows baseline,scheme_a --seeds 0,1,2 \\
      --config-file configs/demo/svrn.yml SOLVER.MAX_EPOCH 2
  python -m fastreid_plugins.reproduce run svrn IV --gpus 0,1,2,3 --gpus-per-row 1 --dry-run"""
_REPORT_HELP = """Write report.md / report.csv / report.png of a table's runs beside the paper's
numbers: one line per row and dataset (the seeds of one setting are one line: mean, sample s.d.,
whether the paper's number is within mean +- 2 s.d.), with how each run ran."""
_REPORT_EXAMPLES = """examples:
  python -m fastreid_plugins.reproduce report svrn III
  python -m fastreid_plugins.reproduce report clip_senet main --dataset VeRi --no-chart"""


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="python -m fastreid_plugins.reproduce", formatter_class=raw,
        description=__doc__.split("\n\nThis process")[0],
        epilog="`python -m fastreid_plugins.reproduce run --help` (or list / report) for each "
               "command's options and examples.")
    p.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,run,report}")
    ls = sub.add_parser("list", help="methods, tables, rows, overrides, the paper's numbers",
                        description="List methods and tables, a method's rows, or a table's "
                                    "overrides, paper numbers and cost.",
                        epilog="examples:\n  python -m fastreid_plugins.reproduce list\n"
                               "  python -m fastreid_plugins.reproduce list svrn III",
                        formatter_class=raw)
    ls.add_argument("method", nargs="?", choices=list(METHODS))
    ls.add_argument("table", nargs="?")
    for name in ("run", "report"):
        sp = sub.add_parser(
            name, formatter_class=raw,
            help=("train + evaluate a table's rows (KEY VALUE overrides for every row)"
                  if name == "run" else "the table's results beside the paper's (md, csv, png)"),
            description=_RUN_HELP if name == "run" else _REPORT_HELP,
            epilog=_RUN_EXAMPLES if name == "run" else _REPORT_EXAMPLES,
            usage=("%(prog)s METHOD TABLE [options] [--] [KEY VALUE ...]" if name == "run"
                   else None))
        sp.add_argument("method", choices=list(METHODS))
        sp.add_argument("table")
        sp.add_argument("--output-dir", default=None,
                        help=f"root of the row folders (default {DEFAULT_OUTPUT}, in the repo)")
        sp.add_argument("--repo", default=None, help="source checkout holding projects/")
        if name == "run":
            sp.add_argument("--rows", type=_comma_list, default=None, metavar="R1,R2",
                            help="only these rows (comma-separated)")
            sp.add_argument("--config-file", default=None,
                            help="base config (default: the table's paper config)")
            sp.add_argument("--dataset", default=None,
                            help="run on this dataset's paper config (one of the table's)")
            sp.add_argument("--seeds", type=_seed_list, default=None, metavar="S1,S2",
                            help="one run per SEED, each in its own folder (report: mean, s.d.)")
            sp.add_argument("--gpus", default="", help="GPU ids to share out, e.g. 0,1,2,3")
            sp.add_argument("--gpus-per-row", type=int, default=1)
            sp.add_argument("--timeout", type=_positive, default=None,
                            help="seconds per row (> 0; default: none)")
            sp.add_argument("--restart", action="store_true",
                            help="empty the selected rows' folders and run them from scratch")
            sp.add_argument("--dry-run", action="store_true",
                            help="print what run would do with each row, and its command")
            sp.add_argument("--no-progress", action="store_true")
        else:
            sp.add_argument("--dataset", default=None, help="only this dataset's lines")
            sp.add_argument("--no-chart", action="store_true")
    return p


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        if "--" in extra:
            i = extra.index("--")
            before, after = extra[:i], extra[i + 1:]
        else:
            before, after = extra, []
        # an option argparse does not know is an error, not a config key (a value may be
        # negative: only the keys' places of the KEY VALUE pairs are checked)
        bad = [x for j, x in enumerate(before) if j % 2 == 0 and x.startswith("-")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)} (run --help lists the "
                         "options; KEY VALUE overrides are config keys such as SOLVER.MAX_EPOCH)")
        args.opts = before + after
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handlers = {"list": cmd_list, "run": cmd_run, "report": cmd_report}
    if args.command == "run":
        signal.signal(signal.SIGTERM, _sigterm)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, _sigterm)
    try:
        return handlers[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}): the running rows were stopped; run the same "
              "command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
