"""One record per method (:class:`Method`, in :data:`METHODS`), and the loss-key rule.

A method's record is its one home: everything else about it is derived from here.

* identity: ``key`` (its package, ``fastreid_plugins.<key>``, and the registry keys'
  ``<key>/<table>/<row>``), ``name`` (the paper's), ``meta_arch`` (FastReID's
  ``META_ARCH_REGISTRY`` name), ``project`` (``projects/<Name>``, its ``train_net.py`` and README);
* configs: ``configs`` (the paper config per dataset, as the paper's numbers name it) and
  ``demo_config`` (the CPU-sized demo); ``tests/test_method_record.py`` keeps them equal to the
  ``configs/`` folder;
* the paper's tables: :attr:`Method.tables` (data, :mod:`fastreid_plugins.papers`);
* the runtime, resolved on first use by importing the method package (which registers the
  meta-architecture): :attr:`~Method.add_config` (adds ``MODEL.<METHOD>``, FastReID's
  ``add_<method>_config`` idiom), :attr:`~Method.validate_config` (checks every key the method
  reads, raising :class:`~fastreid_plugins.errors.ConfigError` naming the key and the accepted
  values, ``MissingConfigError`` when ``add_config`` was not applied) and :attr:`~Method.trainer`
  (the trainer class): the package's ``add_config``, ``validate_config`` and ``Trainer``.

Importing this module imports neither torch nor FastReID nor any method package.

Losses: SVRN and CLIP-SENet read FastReID's ``MODEL.LOSSES.NAME`` and ``*.SCALE``. MFG-Net and
MBFN define their loss by the paper's Eq. 3 (``L = ALPHA L_softmax + BETA L_triplet`` /
``L_softmax + LAMBDA L_triplet``) with their own keys, so :func:`check_fixed_losses` refuses a
``NAME`` or ``SCALE`` that they would otherwise silently ignore.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import papers
from .errors import ConfigError

__all__ = ["Method", "METHODS", "method_for_meta_arch", "check_fixed_losses"]

#: the names a method package defines for its record (``fastreid_plugins.<key>.<name>``)
RUNTIME_NAMES = ("add_config", "validate_config", "Trainer")

_TABLES: Dict[str, Tuple[papers.Table, ...]] = {}


@dataclass(frozen=True, eq=False)
class Method:
    """One method's record (see the module docstring).

    Attributes:
        key: the method id, e.g. ``"clip_senet"`` (its package ``fastreid_plugins.clip_senet``).
        name: the paper's name, e.g. ``"CLIP-SENet"``.
        meta_arch: its ``MODEL.META_ARCHITECTURE``, e.g. ``"CLIPSENet"``.
        project: its project folder, relative to the repository root (``"projects/CLIPSENet"``).
        configs: ``{dataset: paper config}`` (repository-relative ``.yml`` paths), the dataset as
            the paper's numbers name it (FastReID's name of the test set, e.g. ``VeRi``,
            ``SmallVehicleID``, ``LargeVeRiWild``, ``VRIC``); read-only.
        demo_config: the demo config (ResNet-18, the VeRi sample).
    """

    key: str
    name: str
    meta_arch: str
    project: str
    configs: Mapping[str, str]
    demo_config: str

    def __post_init__(self):
        object.__setattr__(self, "configs", MappingProxyType(dict(self.configs)))

    @property
    def train_script(self) -> str:
        """Its ``train_net.py``, relative to the repository root."""
        return f"{self.project}/train_net.py"

    @property
    def package(self) -> ModuleType:
        """The method package ``fastreid_plugins.<key>`` (imported on first use: this registers
        the meta-architecture in FastReID and imports torch)."""
        return importlib.import_module(f"{__package__}.{self.key}")

    def _runtime(self, name: str) -> Any:
        try:
            return getattr(self.package, name)
        except AttributeError:
            raise AttributeError(f"{self.package.__name__} defines no {name!r}: a method package "
                                 f"defines {RUNTIME_NAMES} for its record") from None

    @property
    def add_config(self) -> Callable[[Any], Any]:
        """``add_<key>_config(cfg)``: adds the method's keys to ``cfg`` in place, returns it."""
        return self._runtime("add_config")

    @property
    def validate_config(self) -> Callable[[Any], None]:
        """``validate_<key>_config(cfg)``: raises ``ConfigError`` naming a bad key."""
        return self._runtime("validate_config")

    @property
    def trainer(self) -> type:
        """The trainer class (a FastReID ``DefaultTrainer``) that ``train_net.py`` runs."""
        return self._runtime("Trainer")

    @property
    def tables(self) -> Tuple[papers.Table, ...]:
        """The paper's tables (``fastreid_plugins/papers/<key>.py``), loaded and checked once.

        Raises:
            ValueError: the data are inconsistent (a table's dataset without a paper config in
                :attr:`configs`, a ``None`` number without a reason, ...).
        """
        if self.key not in _TABLES:
            tables = papers.load_tables(self.key)
            papers.check_tables(self.key, tables, self.configs)
            _TABLES[self.key] = tables
        return _TABLES[self.key]

    def table(self, table_id: str) -> papers.Table:
        """The table ``table_id`` (e.g. ``"III"``).

        Raises:
            UnknownAblationError: (a ``ConfigError``) no such table; lists the known ones.
        """
        for t in self.tables:
            if t.table == table_id:
                return t
        raise papers.UnknownAblationError(f"unknown table {table_id!r} of {self.key}; known: "
                                          f"{[t.table for t in self.tables]}")

    @property
    def rows(self) -> List[papers.Row]:
        """Every row of every table, in the tables' order."""
        return [r for t in self.tables for r in t.rows]

    def __repr__(self) -> str:
        return f"Method({self.key!r}, name={self.name!r}, meta_arch={self.meta_arch!r})"


#: every method's record, by key, in a fixed order
METHODS: Dict[str, Method] = {m.key: m for m in (
    Method("mfgnet", "MFG-Net", "MFGNet", "projects/MFGNet", {
        "VeRi": "configs/veri/mfgnet.yml",
        "SmallVehicleID": "configs/vehicleid/mfgnet_small.yml",
        "MediumVehicleID": "configs/vehicleid/mfgnet_medium.yml",
        "LargeVehicleID": "configs/vehicleid/mfgnet_large.yml",
        "VRIC": "configs/vric/mfgnet.yml",
    }, "configs/demo/mfgnet.yml"),
    Method("mbfn", "MBFN", "MBFN", "projects/MBFN", {
        "VeRi": "configs/veri/mbfn.yml",
        "SmallVehicleID": "configs/vehicleid/mbfn_small.yml",
        "MediumVehicleID": "configs/vehicleid/mbfn_medium.yml",
        "LargeVehicleID": "configs/vehicleid/mbfn_large.yml",
        "VRIC": "configs/vric/mbfn.yml",
    }, "configs/demo/mbfn.yml"),
    Method("svrn", "SVRN", "SVRN", "projects/SVRN", {
        "VeRi": "configs/veri/svrn.yml",
        "SmallVehicleID": "configs/vehicleid/svrn_small.yml",
        "MediumVehicleID": "configs/vehicleid/svrn_medium.yml",
        "LargeVehicleID": "configs/vehicleid/svrn_large.yml",
        "SmallVeRiWild": "configs/veriwild/svrn_small.yml",
        "MediumVeRiWild": "configs/veriwild/svrn_medium.yml",
        "LargeVeRiWild": "configs/veriwild/svrn_large.yml",
    }, "configs/demo/svrn.yml"),
    Method("clip_senet", "CLIP-SENet", "CLIPSENet", "projects/CLIPSENet", {
        # tests on VeRiViewpoint: VeRi-776 with the viewpoint labels its CV embedding reads
        "VeRi": "configs/veri/clip_senet.yml",
        "SmallVehicleID": "configs/vehicleid/clip_senet_small.yml",
        "MediumVehicleID": "configs/vehicleid/clip_senet_medium.yml",
        "LargeVehicleID": "configs/vehicleid/clip_senet_large.yml",
        "SmallVeRiWild": "configs/veriwild/clip_senet_small.yml",
        "MediumVeRiWild": "configs/veriwild/clip_senet_medium.yml",
        "LargeVeRiWild": "configs/veriwild/clip_senet_large.yml",
    }, "configs/demo/clip_senet.yml"),
)}


def method_for_meta_arch(name: str) -> Optional[Method]:
    """The record whose ``meta_arch`` is ``name`` (``MODEL.META_ARCHITECTURE``), or ``None``
    (FastReID's own ``Baseline``, ``MGN``, ...)."""
    return next((m for m in METHODS.values() if m.meta_arch == name), None)


#: FastReID 1.4.0's defaults of the keys a fixed-loss method does not read
_FASTREID_LOSS_DEFAULTS = {"NAME": ("CrossEntropyLoss",), "CE.SCALE": 1.0, "TRI.SCALE": 1.0}


def check_fixed_losses(cfg: Any, method: str, instead: str) -> None:
    """Refuse ``MODEL.LOSSES.NAME`` / ``CE.SCALE`` / ``TRI.SCALE`` other than FastReID's defaults
    for a method whose loss terms come from its own keys.

    Args:
        cfg: the config.
        method: the method's name, for the message.
        instead: the keys that set its loss terms, for the message.

    Raises:
        ConfigError: naming the key, its value and the keys to use instead.
    """
    losses = cfg.MODEL.LOSSES
    for key, default in _FASTREID_LOSS_DEFAULTS.items():
        node = losses
        for part in key.split("."):
            node = node[part]
        value = tuple(node) if key == "NAME" else node
        if value != default:
            raise ConfigError(
                f"MODEL.LOSSES.{key}={value!r} does not apply to {method}: its loss is the "
                f"paper's, set by {instead}. Leave MODEL.LOSSES.{key} at FastReID's default "
                f"{default!r}.")
