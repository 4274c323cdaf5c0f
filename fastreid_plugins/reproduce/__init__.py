"""Reproduce the papers' ablation tables: every row addressed by key (:mod:`.registry`, over the
method records of :mod:`fastreid_plugins.method` and the data of :mod:`fastreid_plugins.papers`),
a runner that trains and evaluates rows as subprocesses of the projects' ``train_net.py``
(:mod:`.runner`) and a report beside the paper's numbers (:mod:`.report`). Command line: ``python
-m fastreid_plugins.reproduce {list,run,report}``. Nothing here imports torch or FastReID.
"""

from .registry import (
                       METRICS,
                       Delta,
                       Row,
                       Table,
                       UnknownAblationError,
                       all_rows,
                       get_method,
                       get_row,
                       get_table,
                       rows,
                       table_configs,
                       tables,
)

__all__ = ["METRICS", "Delta", "Row", "Table", "UnknownAblationError", "all_rows", "get_method",
           "get_row", "get_table", "rows", "table_configs", "tables"]
