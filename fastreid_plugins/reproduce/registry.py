"""Every ablation row of the four papers, addressed by key: ``<method>/<table>/<row>``.

Nothing is stored here: the methods, their project folders and paper configs come from the
method records (:data:`fastreid_plugins.method.METHODS`), the tables and rows from each record's
:attr:`~fastreid_plugins.method.Method.tables` (the data, :mod:`fastreid_plugins.papers`). This
module and what it reads import nothing heavy (no torch, no FastReID, no method package), so
``python -m fastreid_plugins.reproduce list`` answers at once::

    get_row("svrn/II/baseline").overrides      # KEY VALUE strings over the paper config
    table_configs(get_table("svrn", "III"))    # {dataset: paper config}
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from ..method import METHODS, Method
from ..papers import METRICS, Delta, Row, Table, UnknownAblationError

__all__ = ["Row", "Table", "Delta", "METRICS", "UnknownAblationError", "get_method", "tables",
           "get_table", "get_row", "rows", "all_rows", "table_configs"]


def get_method(key: str) -> Method:
    """The record of method ``key`` (``mfgnet``, ``mbfn``, ``svrn``, ``clip_senet``).

    Raises:
        UnknownAblationError: (a ``ConfigError``) unknown method; lists the known ones.
    """
    if key not in METHODS:
        raise UnknownAblationError(f"unknown method {key!r}; known: {list(METHODS)}")
    return METHODS[key]


def tables(method: str) -> Tuple[Table, ...]:
    """Every :class:`Table` of ``method``, in the paper's order."""
    return get_method(method).tables


def get_table(method: str, table: str) -> Table:
    """The :class:`Table` ``table`` of ``method``.

    Raises:
        UnknownAblationError: (a ``ConfigError``) unknown method or table; lists the known ones.
    """
    return get_method(method).table(table)


def get_row(key: str) -> Row:
    """The :class:`Row` of ``"<method>/<table>/<row>"``, e.g. ``"svrn/II/baseline"``.

    Raises:
        UnknownAblationError: (a ``ConfigError``) not three parts, or unknown method, table or
            row; lists the known ones.
    """
    parts = key.split("/", 2)
    if len(parts) != 3:
        raise UnknownAblationError(f"{key!r} is not <method>/<table>/<row>, e.g. "
                                   "'svrn/II/baseline'")
    return get_table(parts[0], parts[1]).row(parts[2])


def rows(method: str, table: str, selected: Optional[Iterable[str]] = None) -> List[Row]:
    """The rows of one table, all or those named in ``selected`` (in the table's order).

    Raises:
        UnknownAblationError: an unknown method, table or selected row.
    """
    t = get_table(method, table)
    if not selected:
        return list(t.rows)
    selected = list(selected)
    for s in selected:
        t.row(s)   # raises, listing the known rows
    return [r for r in t.rows if r.row in set(selected)]


def all_rows(method: Optional[str] = None) -> List[Row]:
    """Every row of every table (of ``method``, or of every method in ``METHODS`` order)."""
    return [r for m in ([method] if method else METHODS) for r in get_method(m).rows]


def table_configs(table: Table) -> Dict[str, str]:
    """``{dataset: paper config}`` of ``table``'s datasets (from its method's record), the
    default one (what ``run`` uses without ``--config-file``) first."""
    configs = get_method(table.method).configs
    return {d: configs[d] for d in table.datasets}
