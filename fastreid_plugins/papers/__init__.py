"""The four papers' ablation tables as data: one module per method (``papers/<method key>.py``,
each a ``TABLES`` tuple of :class:`Table`), and the data types they are written in.

A :class:`Row` is one row of one paper table: the config overrides that build it on top of the
table's paper config, and the numbers the paper prints for it (``None`` where the text lost them,
with the reason). A :class:`Table` groups its rows and names the datasets it is reported on
(each method's paper config per dataset is in its record,
:data:`fastreid_plugins.method.METHODS`), where in the paper it is, and what one run costs on the
paper's hardware (quoted, or "not stated").

Keys are ``<method>/<table>/<row>``. Tables and rows that are our reconstruction rather than the
paper's carry ``-ours`` in their id (``mbfn/table2-ours/h2-h3``, ``svrn/III/4_stages-ours``,
``svrn/extra-ours/no_sim``), and ``Row.ours`` is True for them.

Data, and a low layer on its own merits: this package imports nothing of ``fastreid_plugins`` but
:mod:`~fastreid_plugins.errors` (no torch, no FastReID, no method package), so the method records
and ``python -m fastreid_plugins.reproduce list`` read it at once. Each method's record loads its
module (:attr:`fastreid_plugins.method.Method.tables`); the key-addressed lookups
(``get_row("svrn/II/baseline")``) are :mod:`fastreid_plugins.reproduce.registry`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Collection, Dict, List, Optional, Tuple

from ..errors import UnknownAblationError

__all__ = ["Row", "Table", "Delta", "METRICS", "TEST_SETS", "UnknownAblationError", "with_text",
           "check_tables", "load_tables", "test_sets"]

#: metric names, as the evaluator writes them (``<dataset>_results.json``)
METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")

#: the test sets (FastReID dataset names, as ``<test set>_results.json`` names them) that fill a
#: paper column, where they are more than the column's own name: VeRi-776 with or without the
#: viewpoint labels (CLIP-SENet's CV embedding reads them) is one test set, one column
TEST_SETS = {"VeRi": ("VeRi", "VeRiViewpoint")}


def test_sets(dataset: str) -> Tuple[str, ...]:
    """The test sets whose results fill the paper column ``dataset`` (``"VeRi"`` ->
    ``("VeRi", "VeRiViewpoint")``; any other -> ``(dataset,)``)."""
    return TEST_SETS.get(dataset, (dataset,))


@dataclass(frozen=True)
class Delta:
    """A difference the paper's text prints between two rows: ``row - other = value``."""

    other: str       # the other row's id, in the same table
    dataset: str
    metric: str
    value: float


@dataclass(frozen=True)
class Row:
    """One ablation row.

    Attributes:
        method, table, row: the key parts (``key`` = ``method/table/row``).
        label: the paper's own label of the row, verbatim (what its table or text prints).
        overrides: ``KEY VALUE`` strings on top of the table's paper config (command-line
            strings: ``"False"``, ``"4"``; ``cfg.merge_from_list(list(row.overrides))``).
        paper: ``{dataset: {metric: value or None}}``, the numbers printed for this row; datasets
            are FastReID dataset names (``VeRi``, ``SmallVehicleID``, ``SmallVeRiWild``).
        lost: ``{"dataset/metric": reason}`` for every ``None`` in ``paper`` (and ``"*"``: why
            a row has no numbers at all).
        evidence: verbatim excerpts of the paper's text holding this row's numbers (checked
            against the paper by the tests).
        source: where in the paper (``Table II``, ``Sec. IV-D``).
        ambiguous: why the assignment of a number to this row is uncertain ("" = it is not).
        note: anything else (what the overrides choose where the paper is silent).
        deltas: differences to other rows that the text prints.
        guessed: why the row's overrides are our guess where the paper is silent ("" = they are
            the paper's, as far as its text says); ``list`` and ``report`` label such rows.
    """

    method: str
    table: str
    row: str
    label: str
    overrides: Tuple[str, ...] = ()
    paper: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    lost: Dict[str, str] = field(default_factory=dict)
    evidence: Tuple[str, ...] = ()
    source: str = ""
    ambiguous: str = ""
    note: str = ""
    deltas: Tuple[Delta, ...] = ()
    guessed: str = ""

    @property
    def key(self) -> str:
        return f"{self.method}/{self.table}/{self.row}"

    @property
    def ours(self) -> bool:
        """True when the row (or its whole table) is our reconstruction, not the paper's."""
        return self.row.endswith("-ours") or self.table.endswith("-ours")

    def numbers(self) -> List[Tuple[str, str, float]]:
        """``[(dataset, metric, value)]`` of every number stored for the row (not None)."""
        return [(d, m, v) for d, ms in self.paper.items() for m, v in ms.items() if v is not None]


@dataclass(frozen=True)
class Table:
    """One paper table (or our own group of rows).

    Attributes:
        method, table: ids (``table`` is the row keys' middle part).
        title: the table's caption or the section's words, quoted.
        datasets: the datasets the table reports, as its rows' ``paper`` keys; the first is what
            ``reproduce run`` uses by default. Each one's paper config is the method record's
            ``configs[dataset]`` (:func:`fastreid_plugins.reproduce.registry.table_configs`).
        source: where in the paper.
        cost: what one row costs on the paper's hardware, quoted from the paper, or "not stated".
        rows: the rows, in the paper's order.
        paper_file: the paper's text file under ``shared/papers/``.
        anchor: a verbatim string of the paper file where the table (or section) starts.
        columns: for tables whose every row is one line of the paper file, the ``(dataset,
            metric)`` order of that line's numbers (the tests compare them in order).
        decimals: the paper's precision (digits after the point) of the table's numbers; the
            report prints the paper's, ours and the differences with it (72.05 stays 72.05).
        per_dataset: ``run`` runs every row once per dataset of ``datasets`` (its paper config),
            not only on the first: the main comparison tables (``<method>/main``).
    """

    method: str
    table: str
    title: str
    datasets: Tuple[str, ...]
    source: str
    cost: str
    rows: Tuple[Row, ...]
    paper_file: str
    anchor: str = ""
    columns: Tuple[Tuple[str, str], ...] = ()
    decimals: int = 1
    per_dataset: bool = False

    @property
    def key(self) -> str:
        return f"{self.method}/{self.table}"

    def column_of(self, test_set: str) -> Optional[str]:
        """The dataset (paper column) of ``datasets`` that the results on ``test_set`` fill, or
        None (``"VeRiViewpoint"`` -> ``"VeRi"``; see :data:`TEST_SETS`)."""
        return next((d for d in self.datasets if test_set in test_sets(d)), None)

    @property
    def ours(self) -> bool:
        return self.table.endswith("-ours")

    def row(self, row_id: str) -> Row:
        """The row ``row_id``.

        Raises:
            UnknownAblationError: (a ``ConfigError``) no such row; lists the known ones.
        """
        for r in self.rows:
            if r.row == row_id:
                return r
        raise UnknownAblationError(
            f"unknown row {row_id!r} of {self.key}; known: {[r.row for r in self.rows]}")


def with_text(table: Table, row_id: str, sentence: str, *deltas: Delta, note: str = "") -> Table:
    """``table`` with one more sentence of the paper's text about row ``row_id``: the sentence
    joins the row's evidence and ``deltas`` (``Delta(other, dataset, metric, value)``: ``row -
    other = value`` as the sentence prints it) its deltas; ``note`` is appended to its note.

    Raises:
        KeyError: ``table`` has no row ``row_id``.
    """
    if row_id not in [r.row for r in table.rows]:
        raise KeyError(f"{table.key} has no row {row_id!r}")
    rows = []
    for r in table.rows:
        if r.row == row_id:
            r = replace(r, evidence=r.evidence + (sentence,), deltas=r.deltas + tuple(deltas),
                        note="; ".join(x for x in (r.note, note) if x))
        rows.append(r)
    return replace(table, rows=tuple(rows))


def check_tables(method: str, tables: Tuple[Table, ...], datasets: Collection[str]) -> None:
    """Check one method's tables: every row under its own table, every ``None`` number explained,
    every table's datasets among ``datasets`` (the method record's paper configs), unique ids.

    Raises:
        ValueError: naming the table or row and what is wrong.
    """
    seen = set()
    for t in tables:
        if t.method != method or t.key in seen:
            raise ValueError(f"papers.{method}: table {t.key} is not {method}'s or is repeated")
        seen.add(t.key)
        missing = [d for d in t.datasets if d not in datasets]
        if not t.datasets or missing:
            raise ValueError(f"{t.key}: datasets {list(t.datasets)}; each needs a paper config "
                             f"in METHODS[{method!r}].configs (has {sorted(datasets)})")
        for r in t.rows:
            if (r.method, r.table) != (t.method, t.table):
                raise ValueError(f"{r.key} listed under {t.key}")
            nones = [f"{d}/{m}" for d, ms in r.paper.items() for m, v in ms.items()
                     if v is None]
            explained = "*" in r.lost or (r.paper and all(n in r.lost for n in nones))
            if (nones or not r.paper) and not explained:
                raise ValueError(f"{r.key}: no reason given for its lost numbers")
        if len({r.row for r in t.rows}) != len(t.rows):
            raise ValueError(f"{t.key}: repeated row ids")


def load_tables(method: str) -> Tuple[Table, ...]:
    """The ``TABLES`` of ``papers/<method>.py`` (not checked: see :func:`check_tables`).

    Raises:
        ModuleNotFoundError: no data module for ``method``.
    """
    return tuple(importlib.import_module(f"{__name__}.{method}").TABLES)
