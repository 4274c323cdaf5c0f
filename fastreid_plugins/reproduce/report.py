"""Gather a table's row results into a markdown table, a CSV and a PNG chart beside the paper's
numbers (ours, the paper's, ours - paper, per metric); rows not run or failed are shown as such."""

from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Optional, Tuple

from .registry import get_table
from .runner import read_row_state, row_dir

__all__ = ["gather", "markdown", "write_csv", "write_chart", "write_report"]

#: the report's metric order (the papers lead with mAP)
ORDER = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


def _fmt(v, sign=False):
    if v is None:
        return "-"
    return f"{v:+.1f}" if sign else f"{v:.1f}"


def gather(method: str, table: str, output_root: str,
           dataset: Optional[str] = None) -> Tuple[str, List[str], List[Dict[str, Any]]]:
    """``(dataset, metrics, entries)``: one entry per row of the table with its state (``done``,
    ``failed: <error>``, ``not run``, ``running``, ``interrupted``), our metrics on ``dataset``
    and the paper's.

    ``dataset`` defaults to the test set of the first finished row, else the table's first
    dataset. ``metrics``: those the paper gives for that dataset, else mAP and Rank-1 (plus mINP
    when a row has it and the paper does).
    """
    t = get_table(method, table)
    entries = []
    for r in t.rows:
        result, status = read_row_state(row_dir(output_root, r))
        if result is not None:
            state = "done"
        elif status is None:
            state = "not run"
        elif status.get("status") == "failed":
            state = f"failed: {status.get('error', '')}"
        else:
            state = status.get("status", "?")
        entries.append({"row": r, "result": result, "status": status, "state": state})
    if dataset is None:
        done = [e["result"] for e in entries if e["result"]]
        dataset = done[0]["dataset"] if done else t.datasets[0]
    paper_metrics = {m for r in t.rows for m in r.paper.get(dataset, {})}
    metrics = [m for m in ORDER if m in paper_metrics] or ["mAP", "Rank-1"]
    for e in entries:
        ours = ((e["result"] or {}).get("results") or {}).get(dataset, {})
        paper = e["row"].paper.get(dataset, {})
        e["values"] = {}
        for m in metrics:
            o, p = ours.get(m), paper.get(m)
            e["values"][m] = (o, p, None if o is None or p is None else o - p)
    return dataset, metrics, entries


def markdown(method: str, table: str, output_root: str, dataset: Optional[str] = None) -> str:
    dataset, metrics, entries = gather(method, table, output_root, dataset)
    t = get_table(method, table)
    head = ["row", "paper's label", "state"]
    for m in metrics:
        head += [f"{m} ours", f"{m} paper", "diff"]
    lines = [f"**{t.key}** on {dataset} ({t.title})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for e in entries:
        r = e["row"]
        cells = [f"`{r.row}`", r.label.replace("|", "/"), e["state"].replace("|", "/")[:120]]
        for m in metrics:
            o, p, d = e["values"][m]
            cells += [_fmt(o), _fmt(p), _fmt(d, sign=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if r.ambiguous:
            notes.append(f"- `{r.row}`: {r.ambiguous}")
        lost = r.lost.get("*") or "; ".join(f"{k}: {v}" for k, v in r.lost.items()
                                            if k.startswith(dataset + "/"))
        if lost:
            notes.append(f"- `{r.row}` (paper's numbers missing): {lost}")
    if notes:
        lines += ["", "Notes:", *dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def write_csv(path: str, method: str, table: str, output_root: str,
              dataset: Optional[str] = None) -> str:
    dataset, metrics, entries = gather(method, table, output_root, dataset)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "table", "row", "label", "ours_reconstruction", "state", "dataset",
                    "metric", "ours", "paper", "diff"])
        for e in entries:
            r = e["row"]
            for m in metrics:
                o, p, d = e["values"][m]
                w.writerow([r.method, r.table, r.row, r.label, int(r.ours), e["state"], dataset,
                            m, "" if o is None else f"{o:.4f}", "" if p is None else p,
                            "" if d is None else f"{d:.4f}"])
    return path


def write_chart(path: str, method: str, table: str, output_root: str,
                dataset: Optional[str] = None) -> str:
    """One bar group per row and metric: ours (filled) beside the paper's (hatched)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset, metrics, entries = gather(method, table, output_root, dataset)
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6, 1.2 * len(entries)) * len(metrics)
                                                       / max(1, len(metrics) - 0.5), 4.2),
                             squeeze=False)
    xs = range(len(entries))
    for ax, m in zip(axes[0], metrics):
        ours = [e["values"][m][0] for e in entries]
        paper = [e["values"][m][1] for e in entries]
        ax.bar([x - 0.2 for x in xs], [v or 0 for v in ours], 0.4, label="ours")
        ax.bar([x + 0.2 for x in xs], [v or 0 for v in paper], 0.4, label="paper", hatch="//",
               color="none", edgecolor="tab:orange")
        for x, e in zip(xs, entries):
            if e["values"][m][0] is None:
                ax.text(x - 0.2, 1, e["state"].split(":")[0], rotation=90, ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([e["row"].row for e in entries], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{m} (%)")
        ax.set_ylim(0, 100)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{method}/{table} on {dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(method: str, table: str, output_root: str, dataset: Optional[str] = None,
                 chart: bool = True) -> Tuple[str, List[str]]:
    """Write ``report.md``, ``report.csv`` (and ``report.png``) into the table's folder;
    returns ``(markdown text, [paths])``."""
    folder = os.path.join(output_root, method, table)
    os.makedirs(folder, exist_ok=True)
    text = markdown(method, table, output_root, dataset)
    paths = [os.path.join(folder, "report.md")]
    with open(paths[0], "w") as f:
        f.write(text)
    paths.append(write_csv(os.path.join(folder, "report.csv"), method, table, output_root,
                           dataset))
    if chart:
        try:
            paths.append(write_chart(os.path.join(folder, "report.png"), method, table,
                                     output_root, dataset))
        except ImportError as e:   # matplotlib is optional for the markdown / CSV
            text += f"\n(no report.png: {e}; pip install matplotlib)\n"
    return text, paths
