"""Reproduce the papers' ablation tables: a registry of every row (:mod:`.registry`), a runner that
trains and evaluates rows as subprocesses of the projects' ``train_net.py`` (:mod:`.runner`) and a
report beside the paper's numbers (:mod:`.report`). Command line: ``python -m
fastreid_plugins.reproduce {list,run,report}``. Nothing here imports torch or FastReID.
"""

from .registry import (METHODS, METRICS, PROJECTS, Delta, Row, Table, UnknownAblationError,
                       all_rows, get_row, get_table, legacy_rows, rows, tables)

__all__ = ["METHODS", "METRICS", "PROJECTS", "Delta", "Row", "Table", "UnknownAblationError",
           "all_rows", "get_row", "get_table", "legacy_rows", "rows", "tables"]
