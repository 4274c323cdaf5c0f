"""One results table over every test set of a run (``DATASETS.TESTS``): a line per test set,
ranking and verification metrics side by side.

FastReID's ``DefaultTrainer.test`` prints one table per test set; training on one dataset and
testing on several (VeRi-776, VehicleID with its own protocol, VERI-Wild, VRIC in any mix) then
scatters the numbers over the log. :func:`results_table` puts them in one table (the keys of every
test set in their first-seen order, ``-`` where a test set has no such key, e.g. ``mAP_std`` outside
VehicleID), which :class:`~fastreid_plugins.engine.PluginTrainer` logs and writes to
``OUTPUT_DIR/results_table.csv``.
"""

from __future__ import annotations

import csv
import os
from typing import Any, List, Mapping

__all__ = ["results_table", "write_results_table", "table_columns"]


def table_columns(results: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """The metric columns: every numeric key of the test sets, in first-seen order."""
    cols: List[str] = []
    for res in results.values():
        for k, v in res.items():
            if k not in cols and k != "dataset" and isinstance(v, (int, float)):
                cols.append(k)
    return cols


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A pipe table (tabulate), one line per test set, two decimals.

    Args:
        results (dict): ``{test set: {metric: value}}`` as ``DefaultTrainer.test`` returns for
            several test sets.
    """
    from tabulate import tabulate

    cols = table_columns(results)
    rows = [[name] + [f"{res[c]:.2f}" if c in res else "-" for c in cols]
            for name, res in results.items()]
    return tabulate(rows, headers=["Dataset"] + cols, tablefmt="pipe", disable_numparse=True)


def write_results_table(results: Mapping[str, Mapping[str, Any]], path: str) -> str:
    """Write the table as CSV (``dataset`` then the :func:`table_columns`; empty = no value).

    Returns:
        str: ``path``.
    """
    cols = table_columns(results)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataset"] + cols)
        for name, res in results.items():
            w.writerow([name] + [res.get(c, "") for c in cols])
    return path

