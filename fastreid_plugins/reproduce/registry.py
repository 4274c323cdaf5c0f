"""One registry of every ablation row of the four papers (MFG-Net, MBFN, SVRN, CLIP-SENet).

A :class:`Row` is one row of one paper table: the config overrides that build it on top of the
table's paper config, and the numbers the paper prints for it (``None`` where the text lost them,
with the reason). A :class:`Table` groups its rows and says which config(s) it runs on, where in
the paper it is, and what one run costs on the paper's hardware (quoted, or "not stated").

Keys are ``<method>/<table>/<row>``. Tables and rows that are our reconstruction rather than the
paper's carry ``-ours`` in their id (``mbfn/table2-ours/h2-h3``, ``svrn/III/4_stages-ours``,
``svrn/extra-ours/no_sim``), and ``Row.ours`` is True for them.

This module and the data modules it reads import nothing heavy (no torch, no FastReID), so
``python -m fastreid_plugins.reproduce list`` answers at once. Each method's ``config.ABLATIONS``
is derived from here (:func:`legacy_ablations`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Tuple

from ..errors import ConfigError

__all__ = ["Row", "Table", "Delta", "METHODS", "PROJECTS", "METRICS", "tables", "get_table",
           "get_row", "rows", "all_rows", "legacy_rows", "UnknownAblationError", "with_text"]

#: method id -> (project folder under ``projects/``, the paper's short name)
PROJECTS = {"mfgnet": ("MFGNet", "MFG-Net"), "mbfn": ("MBFN", "MBFN"),
            "svrn": ("SVRN", "SVRN"), "clip_senet": ("CLIPSENet", "CLIP-SENet")}
METHODS = tuple(PROJECTS)
#: metric names, as the evaluator writes them (``<dataset>_results.json``)
METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")


class UnknownAblationError(ConfigError, KeyError):
    """An unknown method, table or row; the message lists the known ones."""

    def __str__(self):  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


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
        overrides: ``KEY VALUE`` strings on top of the table's paper config.
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
        legacy: this row's key in the method's ``config.ABLATIONS`` (kept for old callers).
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
    legacy: str = ""

    @property
    def key(self):
        return f"{self.method}/{self.table}/{self.row}"

    @property
    def ours(self):
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
        configs: ``{dataset: paper config}``; the first one is what ``run`` uses by default.
        source: where in the paper.
        cost: what one row costs on the paper's hardware, quoted from the paper, or "not stated".
        rows: the rows, in the paper's order.
        paper_file: the paper's text file under ``shared/papers/``.
        anchor: a verbatim string of the paper file where the table (or section) starts.
        columns: for tables whose every row is one line of the paper file, the ``(dataset,
            metric)`` order of that line's numbers (the tests compare them in order).
    """

    method: str
    table: str
    title: str
    configs: Dict[str, str]
    source: str
    cost: str
    rows: Tuple[Row, ...]
    paper_file: str
    anchor: str = ""
    columns: Tuple[Tuple[str, str], ...] = ()

    @property
    def key(self):
        return f"{self.method}/{self.table}"

    @property
    def ours(self):
        return self.table.endswith("-ours")

    @property
    def base_config(self):
        return next(iter(self.configs.values()))

    def row(self, row_id: str) -> Row:
        for r in self.rows:
            if r.row == row_id:
                return r
        raise UnknownAblationError(
            f"unknown row {row_id!r} of {self.key}; known: {[r.row for r in self.rows]}")


def with_text(table: Table, row_id: str, sentence: str, *deltas: Delta, note: str = "") -> Table:
    """``table`` with one more sentence of the paper's text about row ``row_id``: the sentence
    joins the row's evidence and ``deltas`` (``Delta(other, dataset, metric, value)``: ``row -
    other = value`` as the sentence prints it) its deltas; ``note`` is appended to its note."""
    if row_id not in [r.row for r in table.rows]:
        raise KeyError(f"{table.key} has no row {row_id!r}")
    rows = []
    for r in table.rows:
        if r.row == row_id:
            r = replace(r, evidence=r.evidence + (sentence,), deltas=r.deltas + tuple(deltas),
                        note="; ".join(x for x in (r.note, note) if x))
        rows.append(r)
    return replace(table, rows=tuple(rows))


_CACHE: Dict[str, Tuple[Table, ...]] = {}


def _check_method(method):
    if method not in PROJECTS:
        raise UnknownAblationError(f"unknown method {method!r}; known: {list(METHODS)}")


def tables(method: str) -> Tuple[Table, ...]:
    """Every :class:`Table` of ``method`` (``mfgnet``, ``mbfn``, ``svrn``, ``clip_senet``)."""
    _check_method(method)
    if method not in _CACHE:
        mod = importlib.import_module(f"{__package__}.papers.{method}")
        tabs = tuple(mod.TABLES)
        for t in tabs:
            for r in t.rows:
                if (r.method, r.table) != (t.method, t.table):
                    raise AssertionError(f"{r.key} listed under {t.key}")
                nones = [f"{d}/{m}" for d, ms in r.paper.items() for m, v in ms.items()
                         if v is None]
                explained = "*" in r.lost or (r.paper and all(n in r.lost for n in nones))
                if (nones or not r.paper) and not explained:
                    raise AssertionError(f"{r.key}: no reason given for its lost numbers")
        _CACHE[method] = tabs
    return _CACHE[method]


def get_table(method: str, table: str) -> Table:
    """The :class:`Table` ``table`` of ``method``.

    Raises:
        UnknownAblationError: (a ``ConfigError``) unknown method or table; lists the known ones.
    """
    for t in tables(method):
        if t.table == table:
            return t
    raise UnknownAblationError(f"unknown table {table!r} of {method}; known: "
                               f"{[t.table for t in tables(method)]}")


def get_row(key: str) -> Row:
    """The :class:`Row` of ``"<method>/<table>/<row>"``."""
    parts = key.split("/", 2)
    if len(parts) != 3:
        raise UnknownAblationError(f"{key!r} is not <method>/<table>/<row>, e.g. "
                                   "'svrn/II/baseline'")
    return get_table(parts[0], parts[1]).row(parts[2])


def rows(method: str, table: str, selected: Optional[Iterable[str]] = None) -> List[Row]:
    """The rows of one table, all or those named in ``selected`` (in the table's order)."""
    t = get_table(method, table)
    if not selected:
        return list(t.rows)
    for s in selected:
        t.row(s)   # raises, listing the known rows
    return [r for r in t.rows if r.row in set(selected)]


def all_rows(method: Optional[str] = None) -> List[Row]:
    """Every row of every table (of ``method``, or of all four methods)."""
    out = []
    for m in ([method] if method else METHODS):
        for t in tables(m):
            out.extend(t.rows)
    return out


def legacy_rows(method: str) -> List[Tuple[str, Row]]:
    """``[(legacy key, Row)]`` of ``method``'s rows that have a ``config.ABLATIONS`` key, in the
    registry's order."""
    return [(r.legacy, r) for r in all_rows(method) if r.legacy]
