"""Gather a table's run results into a markdown table, a CSV and a PNG chart beside the paper's
numbers.

One line per row, paper column (dataset) and setting: a run's results fill the column whose test
sets include the one it was evaluated on (:meth:`fastreid_plugins.papers.Table.column_of`:
``VeRiViewpoint`` fills ``VeRi``), whatever row finished first; runs of the same config and
overrides with different seeds (``run --seeds 0,1,2``) are one line: each seed, the mean, the
sample standard deviation and whether the paper's number lies within our spread, defined as
**mean +- 2 sample standard deviations** (two or more seeds; with one run there is no spread).
Numbers keep the paper's precision (:attr:`~fastreid_plugins.papers.Table.decimals`); a run
shorter or smaller than the paper config (fewer epochs, a smaller input, another backbone) is
labelled "short run: not comparable" in the markdown, CSV and PNG.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ConfigError
from .registry import get_method, get_table
from .runner import normalise_config, read_row_state, repo_root, row_dir, row_state, run_dirs

__all__ = ["gather", "markdown", "write_csv", "write_chart", "write_report", "spread",
           "SHORT_RUN", "ORDER"]

#: the report's metric order (the papers lead with mAP)
ORDER = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")
#: the label of a run shorter or smaller than the paper config
SHORT_RUN = "short run: not comparable"
#: what the report calls our spread: mean +- this many sample standard deviations
SPREAD_SDS = 2.0


def _fmt(v, dec, sign=False):
    if v is None:
        return "-"
    return f"{v:+.{dec}f}" if sign else f"{v:.{dec}f}"


def spread(values: List[float]) -> Tuple[float, Optional[float]]:
    """``(mean, sample standard deviation)`` of ``values`` (the s.d. is None for one value).

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("spread of no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _what_is_there(output_root):
    found = []
    for dirpath, _, files in os.walk(output_root):
        if "row.json" in files or "result.json" in files or "status.json" in files:
            rel = os.path.relpath(dirpath, output_root).split(os.sep)
            if len(rel) >= 2:
                found.append("/".join(rel[:2]))
    return sorted(set(found))


def _config_columns(t, repo):
    cols = {}
    for d, c in get_method(t.method).configs.items():
        if d in t.datasets:
            try:
                cols[normalise_config(c, repo)] = d
            except ConfigError:
                pass
    return cols


def _run_info(t, d, cfg_cols):
    """One run folder: its column, setting group, seed, state, result."""
    result, _ = read_row_state(d)
    info = _read_row_json(d)
    settings = (result or {}).get("settings") or info.get("settings") or {}
    column = None
    if result:
        column = result.get("column") or t.column_of(result.get("dataset", "")) \
            or result.get("dataset")
    column = column or cfg_cols.get(settings.get("config_file")) or t.datasets[0]
    group = (settings.get("config_file"), tuple(settings.get("overrides") or ()),
             tuple(settings.get("opts") or ()))
    return {"dir": d, "column": column, "group": group, "seed": settings.get("seed"),
            "state": row_state(d), "result": result}


def _read_row_json(d):
    import json

    try:
        with open(os.path.join(d, "row.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _line_values(line, metrics, t):
    runs = [r for r in line["runs"] if r["result"]]
    tests = {}
    for r in runs:
        results = r["result"].get("results") or {}
        ts = next((x for x in results if t.column_of(x) == line["dataset"] or x ==
                   line["dataset"]), None)
        tests[id(r)] = results.get(ts, {}) if ts else {}
    values = {}
    for m in metrics:
        seeds = [(r["seed"], tests[id(r)][m]) for r in runs if tests[id(r)].get(m) is not None]
        p = line["row"].paper.get(line["dataset"], {}).get(m)
        if seeds:
            mean, sd = spread([v for _, v in seeds])
        else:
            mean, sd = None, None
        within = None
        if sd is not None and p is not None:
            within = mean - SPREAD_SDS * sd <= p <= mean + SPREAD_SDS * sd
        values[m] = {"seeds": seeds, "mean": mean, "sd": sd, "paper": p,
                     "diff": None if mean is None or p is None else mean - p, "within": within}
    return values


def _state(runs):
    if not runs:
        return "not run"
    states = [r["state"] for r in runs]
    if all(s == "done" for s in states):
        return "done" + (f" ({len(states)} seeds)" if len(states) > 1 else "")
    uniq = list(dict.fromkeys(states))
    return "; ".join(uniq)


def gather(method: str, table: str, output_root: str, dataset: Optional[str] = None,
           repo: Optional[str] = None) -> Tuple[Any, List[str], List[Dict[str, Any]]]:
    """``(table, metrics, lines)``: one line per row, paper column and setting (config, overrides,
    user overrides; the seeds of one setting are one line), with its state, runs, how they ran
    and per metric ``{seeds, mean, sd, paper, diff, within}``; a row not run on a column where
    the paper has its numbers is a ``not run`` line.

    ``metrics``: those the paper gives for the columns shown (in :data:`ORDER`), else mAP and
    Rank-1.

    Raises:
        ConfigError: no run of ``method/table`` under ``output_root`` (names what is there), or
            ``dataset`` not a column of the table nor a test set of its runs.
    """
    t = get_table(method, table)
    repo = repo or repo_root()
    cfg_cols = _config_columns(t, repo)
    per_row = {r.row: [_run_info(t, d, cfg_cols) for d in run_dirs(output_root, r)]
               for r in t.rows}
    if not any(per_row.values()):
        there = _what_is_there(output_root) if os.path.isdir(output_root) else []
        raise ConfigError(f"no run of {t.key} under {output_root}: "
                          + (f"it holds runs of {', '.join(there)}" if there else
                             "it holds no runs at all")
                          + f" (run: python -m fastreid_plugins.reproduce run {method} {table}; "
                            "or pass the --output-dir the runs went to)")
    found_cols = {i["column"] for runs in per_row.values() for i in runs}
    if dataset is not None and dataset not in t.datasets and dataset not in found_cols:
        raise ConfigError(f"--dataset {dataset!r}: {t.key} reports {list(t.datasets)}; its runs "
                          f"filled {sorted(found_cols)}")
    lines = []
    for r in t.rows:
        runs = per_row[r.row]
        cols = list(dict.fromkeys(
            [d for d in t.datasets if d in r.paper or d in {i["column"] for i in runs}]
            + [i["column"] for i in runs]))
        if not cols:
            cols = [t.datasets[0]]
        for col in cols:
            if dataset is not None and col != dataset:
                continue
            mine = [i for i in runs if i["column"] == col]
            groups = list(dict.fromkeys(i["group"] for i in mine)) or [None]
            for g in groups:
                grun = sorted([i for i in mine if i["group"] == g],
                              key=lambda i: (i["seed"] is None, i["seed"] or 0))
                lines.append({"row": r, "dataset": col, "runs": grun, "state": _state(grun)})
    shown = {ln["dataset"] for ln in lines}
    paper_metrics = {m for r in t.rows for d, ms in r.paper.items() if d in shown for m in ms}
    metrics = [m for m in ORDER if m in paper_metrics] or ["mAP", "Rank-1"]
    for ln in lines:
        ln["values"] = _line_values(ln, metrics, t)
        ln["short"] = sorted({x for i in ln["runs"] if i["result"]
                              for x in (i["result"].get("provenance") or {}).get(
                                  "short_run", ["no record of how it ran"])})
        ln["guessed"] = ln["row"].guessed if ln["row"].numbers() else ""
    return t, metrics, lines


def _ours_cell(v, dec):
    if v["mean"] is None:
        return "-"
    if v["sd"] is None:
        return _fmt(v["mean"], dec)
    return f"{_fmt(v['mean'], dec)} ± {_fmt(v['sd'], dec)} (n={len(v['seeds'])})"


def _diff_cell(v, dec):
    if v["diff"] is None:
        return "-"
    if v["within"] is None:
        return _fmt(v["diff"], dec, sign=True)
    return _fmt(v["diff"], dec, sign=True) + (" (paper within)" if v["within"]
                                              else " (paper outside)")


def _how(run):
    p = (run["result"] or {}).get("provenance") or {}
    if not p:
        return "not recorded"
    w = p.get("weights")
    return (f"config `{p.get('config_file')}` (paper config `{p.get('paper_config')}`), "
            f"overrides `{' '.join(p.get('overrides') or []) or '(none)'}`, your "
            f"`{' '.join(p.get('opts') or []) or '(none)'}`, seed {p.get('seed')}, "
            f"{p.get('epochs')} epochs of the paper config's {p.get('epochs_paper_config')}, "
            f"input {p.get('input_size')} (paper config {p.get('input_size_paper_config')}), "
            f"weights {os.path.basename(w) if w else 'none'}"
            + (f" sha256 {p.get('weights_sha256')}" if w else "")
            + f", commit {p.get('git_commit')}, torch {p.get('torch')}, FastReID "
              f"{p.get('fastreid')}, device {p.get('device')}, GPUs {p.get('gpus')}")


def _text_deltas(t, lines, dec):
    means = {}
    for ln in lines:
        for m, v in ln["values"].items():
            if v["mean"] is not None:
                means.setdefault((ln["row"].row, ln["dataset"], m), v["mean"])
    out = []
    for r in t.rows:
        for d in r.deltas:
            a, b = means.get((r.row, d.dataset, d.metric)), means.get((d.other, d.dataset,
                                                                        d.metric))
            ours = "-" if a is None or b is None else _fmt(a - b, dec, sign=True)
            out.append(f"- `{r.row}` - `{d.other}`, {d.metric} on {d.dataset}: paper's text "
                       f"{_fmt(d.value, dec, sign=True)}, ours {ours}")
    return out


def _line_notes(ln, metrics, dec):
    """``(how it ran, seeds, notes)`` lines of one report line."""
    how, seeds, notes = [], [], []
    r = ln["row"]
    name = f"`{r.row}` on {ln['dataset']}"
    for run in ln["runs"]:
        if run["result"]:
            how.append(f"- {name}" + (f", seed {run['seed']}" if run["seed"] is not None
                                      else "") + f": {_how(run)}")
    if ln["short"]:
        how.append(f"- {name}: **{SHORT_RUN}** ({'; '.join(ln['short'])})")
    for m in metrics:
        v = ln["values"][m]
        if len(v["seeds"]) > 1:
            seeds.append(f"- {name}, {m}: " + ", ".join(
                f"seed {s}: {_fmt(x, dec)}" for s, x in v["seeds"])
                + f"; mean {_fmt(v['mean'], dec)}, s.d. {_fmt(v['sd'], dec)}")
    if ln["guessed"]:
        notes.append(f"- `{r.row}`: guessed config: {r.guessed}")
    if r.ambiguous:
        notes.append(f"- `{r.row}`: {r.ambiguous}")
    lost = r.lost.get("*") or "; ".join(f"{k}: {v}" for k, v in r.lost.items()
                                        if k.startswith(ln["dataset"] + "/"))
    if lost:
        notes.append(f"- `{r.row}` (paper's numbers missing on {ln['dataset']}): {lost}")
    return how, seeds, notes


def markdown(method: str, table: str, output_root: str, dataset: Optional[str] = None,
             repo: Optional[str] = None) -> str:
    """The report as markdown (see the module docstring).

    Raises:
        ConfigError: as :func:`gather`.
    """
    t, metrics, lines = gather(method, table, output_root, dataset, repo)
    dec = t.decimals
    head = ["row", "paper's label", "dataset", "state"]
    for m in metrics:
        head += [f"{m} ours", f"{m} paper", "diff"]
    out = [f"**{t.key}** ({t.title})", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes, how, seeds = [], [], []
    for ln in lines:
        r = ln["row"]
        state = ln["state"] + (f"; {SHORT_RUN}" if ln["short"] else "")
        label = r.label.replace("|", "/") + (" [guessed config]" if ln["guessed"] else "")
        cells = [f"`{r.row}`", label, ln["dataset"], state.replace("|", "/")[:160]]
        for m in metrics:
            v = ln["values"][m]
            cells += [_ours_cell(v, dec), _fmt(v["paper"], dec), _diff_cell(v, dec)]
        out.append("| " + " | ".join(cells) + " |")
        h, sd, nt = _line_notes(ln, metrics, dec)
        how += h
        seeds += sd
        notes += nt
    if seeds:
        out += ["", f"Seeds (our spread: mean ± {SPREAD_SDS:g} sample s.d.; \"paper within\" = "
                    "the paper's number lies in it):", *seeds]
    deltas = _text_deltas(t, lines, dec)
    if deltas:
        out += ["", "Differences the paper's text prints, and ours:", *deltas]
    if how:
        out += ["", "How each run ran:", *how]
    if notes:
        out += ["", "Notes:", *dict.fromkeys(notes)]
    if any(ln["row"].ours for ln in lines):
        out += ["", "Rows or tables whose id ends in `-ours`: a table `-ours` (and "
                    "`extra-ours`) is our own grid, with no paper numbers; a row `-ours` of a "
                    "paper table (`svrn/III/4_stages-ours`) has the paper's numbers and a config "
                    "that is our guess."]
    return "\n".join(out) + "\n"


def write_csv(path: str, method: str, table: str, output_root: str,
              dataset: Optional[str] = None, repo: Optional[str] = None) -> str:
    """``report.csv``: one line per report line and metric (ours = the mean over the seeds).

    Raises:
        ConfigError: as :func:`gather`.
    """
    t, metrics, lines = gather(method, table, output_root, dataset, repo)
    dec = t.decimals
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "table", "row", "label", "ours_reconstruction", "guessed_config",
                    "state", "comparable", "dataset", "metric", "seeds", "ours", "sd", "paper",
                    "diff", "paper_within_spread"])
        for ln in lines:
            r = ln["row"]
            for m in metrics:
                v = ln["values"][m]
                w.writerow([r.method, r.table, r.row, r.label, int(r.ours), ln["guessed"],
                            ln["state"], f"{SHORT_RUN} ({'; '.join(ln['short'])})"
                            if ln["short"] else ("yes" if v["mean"] is not None else ""),
                            ln["dataset"], m,
                            " ".join(f"{s}:{x:.4f}" for s, x in v["seeds"]),
                            "" if v["mean"] is None else f"{v['mean']:.4f}",
                            "" if v["sd"] is None else f"{v['sd']:.4f}",
                            "" if v["paper"] is None else f"{v['paper']:.{dec}f}",
                            "" if v["diff"] is None else f"{v['diff']:.4f}",
                            "" if v["within"] is None else int(v["within"])])
    return path


def _ylim(values):
    lo, hi = min(values), max(values)
    pad = max(1.0, 0.15 * (hi - lo))
    return max(0.0, lo - pad), min(100.0, hi + pad) if hi <= 100 else hi + pad


def write_chart(path: str, method: str, table: str, output_root: str,
                dataset: Optional[str] = None, repo: Optional[str] = None) -> str:
    """One bar per report line and metric: ours (the mean; the s.d. as an error bar), the
    paper's value as a marker, each gap written above; the axis spans the numbers shown (not
    0-100); short runs are labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, metrics, lines = gather(method, table, output_root, dataset, repo)
    dec = t.decimals
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.0, 0.9 * len(lines) + 2)
                                                       * len(metrics), 4.6), squeeze=False)
    xs = list(range(len(lines)))
    for ax, m in zip(axes[0], metrics):
        vals = [ln["values"][m] for ln in lines]
        ours = [v["mean"] for v in vals]
        ax.bar([x for x, o in zip(xs, ours) if o is not None], [o for o in ours if o is not None],
               0.6, yerr=[v["sd"] or 0 for v in vals if v["mean"] is not None], label="ours",
               color="tab:blue", alpha=0.8, capsize=3)
        px = [(x, v["paper"]) for x, v in zip(xs, vals) if v["paper"] is not None]
        if px:
            ax.plot([x for x, _ in px], [p for _, p in px], "D", color="tab:orange",
                    label="paper", markersize=7)
        numbers = [o for o in ours if o is not None] + [p for _, p in px]
        if numbers:
            lo, hi = _ylim(numbers)
            ax.set_ylim(lo, hi)
        for x, v, ln in zip(xs, vals, lines):
            if v["diff"] is not None:
                ax.annotate(_fmt(v["diff"], dec, sign=True), (x, max(v["mean"], v["paper"])),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
            elif v["mean"] is None:
                ax.annotate(ln["state"].split(":")[0][:20], (x, ax.get_ylim()[0]),
                            textcoords="offset points", xytext=(0, 4), ha="center",
                            rotation=90, fontsize=7, va="bottom")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{ln['row'].row}\n{ln['dataset']}"
                            + ("\n(short run)" if ln["short"] else "") for ln in lines],
                           rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{m} (%)")
    axes[0][0].legend(fontsize=8)
    short = any(ln["short"] for ln in lines)
    fig.suptitle(f"{t.key}" + (f" — {SHORT_RUN}" if short else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(method: str, table: str, output_root: str, dataset: Optional[str] = None,
                 chart: bool = True, repo: Optional[str] = None) -> Tuple[str, List[str]]:
    """Write ``report.md``, ``report.csv`` (and ``report.png``) into the table's folder;
    returns ``(markdown text, [paths])``.

    Raises:
        ConfigError: as :func:`gather`.
    """
    text = markdown(method, table, output_root, dataset, repo)
    folder = os.path.dirname(row_dir(output_root, get_table(method, table).rows[0]))
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, "report.md")]
    with open(paths[0], "w") as f:
        f.write(text)
    paths.append(write_csv(os.path.join(folder, "report.csv"), method, table, output_root,
                           dataset, repo))
    if chart:
        try:
            paths.append(write_chart(os.path.join(folder, "report.png"), method, table,
                                     output_root, dataset, repo))
        except ImportError as e:   # matplotlib is optional for the markdown / CSV
            text += f"\n(no report.png: {e}; pip install matplotlib)\n"
    return text, paths
