"""``python -m fastreid_plugins.reproduce {list,run,report}``: the papers' ablation tables, row by
row, beside the paper's numbers.

    list [METHOD [TABLE]]        methods, tables, rows, overrides and the paper's numbers
    run METHOD TABLE [--rows R ...] [--config-file BASE] [--gpus 0,1 --gpus-per-row 1]
        [--output-dir DIR] [--timeout S] [--dry-run] [KEY VALUE ...]
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
        out("\n`list METHOD` for the rows, `list METHOD TABLE` for overrides and paper numbers; "
            "tables and rows whose id ends in -ours are our reconstruction, not the paper's.")
        return 0
    if args.table is None:
        for t in tables(args.method):
            out(f"{t.key}  {t.title}")
            out(f"  configs: {', '.join(f'{d}: {c}' for d, c in table_configs(t).items())}")
            for r in t.rows:
                out(f"  {r.row:<20} \"{r.label}\"  paper: {_numbers(r)}")
        return 0
    t = get_table(args.method, args.table)
    configs = table_configs(t)
    out(f"{t.key}  {t.title}")
    out(f"  source: {t.source}; paper configs: "
        + ", ".join(f"{d}: {c}" for d, c in configs.items()))
    out(f"  one row on the paper's hardware: {t.cost}")
    out(f"  run: python -m fastreid_plugins.reproduce run {t.method} {t.table}"
        + ("" if len(configs) == 1 else "  (other datasets: --config-file "
           + " | ".join(list(configs.values())[1:]) + ")"))
    for r in t.rows:
        out(f"\n  {r.key}{'  [our reconstruction]' if r.ours else ''}")
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
    return 0


def cmd_run(args: argparse.Namespace, out: Callable[[str], Any] = print) -> int:
    from .runner import build_command, plan, read_row_state, run_rows, slots

    gpus = [g for g in (args.gpus or "").split(",") if g.strip()]
    slot_list = slots(gpus, args.gpus_per_row)
    jobs = plan(args.method, args.table, args.rows, args.config_file, args.opts,
                args.output_dir, repo=args.repo)
    if args.dry_run:
        for i, job in enumerate(jobs):
            result, _ = read_row_state(job.out_dir)
            if result is not None:
                out(f"# {job.row.key}: finished, skipped ({job.out_dir}/result.json)")
                continue
            slot = slot_list[i % len(slot_list)]
            cmd, env = build_command(job, slot, repo=args.repo)
            prefix = "".join(f"{k}={v} " for k, v in env.items())
            out(f"# {job.row.key}" + (" (resumes)" if job.resume else ""))
            out(prefix + " ".join(shlex.quote(c) for c in cmd))
        return 0
    out(f"{len(jobs)} rows of {args.method}/{args.table} -> "
        f"{os.path.dirname(jobs[0].out_dir) if jobs else args.output_dir}"
        + (f" on GPU groups {[','.join(s) for s in slot_list]}" if slot_list != [None] else
           " (one after another)"))
    states = run_rows(jobs, gpus=gpus, gpus_per_row=args.gpus_per_row,
                      timeout=args.timeout or None, progress=not args.no_progress,
                      repo=args.repo, echo=out)
    failed = [k for k, s in states.items() if s in ("failed", "conflict")]
    out(f"done: {sum(s in ('done', 'skipped') for s in states.values())}/{len(jobs)} rows"
        + (f"; failed: {', '.join(failed)} (see status.json and run.log in each row's folder)"
           if failed else "")
        + f"; report: python -m fastreid_plugins.reproduce report {args.method} {args.table}"
        + ("" if args.output_dir is None else f" --output-dir {args.output_dir}"))
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace, out: Callable[[str], Any] = print) -> int:
    from .report import write_report
    from .runner import repo_root

    root = args.output_dir or os.path.join(args.repo or repo_root(), DEFAULT_OUTPUT)
    get_table(args.method, args.table)
    text, paths = write_report(args.method, args.table, root, args.dataset,
                               chart=not args.no_chart)
    out(text)
    out("written: " + ", ".join(paths))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.reproduce",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="methods, tables, rows, overrides, the paper's numbers")
    ls.add_argument("method", nargs="?", choices=list(METHODS))
    ls.add_argument("table", nargs="?")
    for name in ("run", "report"):
        sp = sub.add_parser(name)
        sp.add_argument("method", choices=list(METHODS))
        sp.add_argument("table")
        sp.add_argument("--output-dir", default=None,
                        help=f"root of the row folders (default {DEFAULT_OUTPUT}, in the repo)")
        sp.add_argument("--repo", default=None, help="source checkout holding projects/")
        if name == "run":
            sp.add_argument("--rows", nargs="+", default=None, help="only these rows")
            sp.add_argument("--config-file", default=None,
                            help="base config (default: the table's paper config)")
            sp.add_argument("--gpus", default="", help="GPU ids to share out, e.g. 0,1,2,3")
            sp.add_argument("--gpus-per-row", type=int, default=1)
            sp.add_argument("--timeout", type=float, default=0,
                            help="seconds per row (0 = none)")
            sp.add_argument("--dry-run", action="store_true", help="print the commands only")
            sp.add_argument("--no-progress", action="store_true")
            sp.epilog = ("KEY VALUE ...: config overrides for every row, after the row's own "
                         "(e.g. SOLVER.MAX_EPOCH 2)")
        else:
            sp.add_argument("--dataset", default=None, help="test set to compare (default: "
                            "the one the rows were evaluated on)")
            sp.add_argument("--no-chart", action="store_true")
    return p


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        extra = [x for x in extra if x != "--"]
        bad = [x for x in extra if x.startswith("--")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.opts = extra
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
