"""The label scheme of a dataset: what its label values mean and what nnunet-hpn does with them.

Read from a dataset.json exactly as nnU-Net reads it -- ``labels`` (name -> value, or name -> list of values for a
region-based dataset) and ``regions_class_order`` -- plus this plugin's own facts under the key ``"hpn"``::

    "labels": {"background": 0, "pancreas": 1, "PDAC": 2, "duct": 3},
    "hpn": {"targets": {"abnormal pancreas": ["pancreas", "PDAC", "duct"], "PDAC": ["PDAC"], "duct": ["duct"]},
            "lesion": "PDAC",
            "union_precedence": ["PDAC", "duct", "pancreas"],
            "reference_phase": "arterial"}

* ``targets``: the evaluated targets in order, each the union of the named labels (default: every foreground
  label on its own, named after it; for a region-based dataset, every region);
* ``lesion``: the target that "missed", "rescued", stratified splits and the locator's default box are about
  (default: the first target);
* ``union_precedence``: foreground label names, first wins, where the maps of a union disagree (default: the
  foreground labels, last listed first); a region-based dataset's union is taken per region instead and painted in
  ``regions_class_order``, as nnU-Net exports region predictions;
* ``reference_phase``: the phase whose grid the labels, registered phases and predictions are on (written by
  ``convert``; None: :func:`nnunet_hpn.phases.reference_phase`'s rule).

The paper's scheme is the built-in preset :data:`PDAC_SCHEME`; a dataset.json without ``"hpn"`` whose labels are
the paper's gets the preset's facts, so datasets converted before the key existed are read as before.

API (nothing here imports torch or nnunetv2):

* :class:`LabelScheme` -- ``from_dataset_json(dict, where)``, ``read(path)``, ``from_labels_file(path)`` (the file of
  ``convert --labels``), ``dataset_json_fields()`` (what convert writes into dataset.json), ``values`` (every voxel
  value a label map may hold), ``target_values`` (target -> label values, the masks of :mod:`nnunet_hpn.evaluate`),
  ``lesion_values``, ``foreground_values``, ``label_values(name)``, ``class_index(name)`` (the network's output
  channel of a label or region), ``per_class(by_name)`` (a per-class setting keyed by label name, as a list per
  output channel), ``output_values`` (value in a predicted map -> name), ``nnunet_regions_or_labels`` (what
  nnU-Net's own evaluation scores), ``unexpected_values(voxels, where)`` and the two checks built on it,
  ``check_values`` / ``check_label_map``;
* :data:`PDAC_SCHEME` -- the paper's labels, targets "abnormal pancreas", "PDAC", "duct", lesion PDAC;
* :func:`resolve_scheme` -- the scheme of a command's ``-djfile``, else of the first dataset.json found beside its
  inputs, else :data:`PDAC_SCHEME`; :func:`dataset_json_candidates` lists where "beside" looks;
* :func:`dataset_reference_phase` -- a dataset's reference phase: the one asked for, else the stored one, else the
  rule of :func:`nnunet_hpn.phases.reference_phase` (the planner, trainers, predict and the locator use it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.phases import channel_names, reference_phase

#: dataset.json key of the plugin's own facts
HPN_KEY = "hpn"
#: keys of a ``convert --labels`` file besides ``labels`` (the "hpn" facts convert stores, without the phase)
LABELS_FILE_KEYS: tuple[str, ...] = ("labels", "regions_class_order", "targets", "lesion", "union_precedence")

LabelValue = Union[int, tuple[int, ...]]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _shown(values: Sequence[int], most: int = 10) -> str:
    """The first ``most`` of ``values`` comma-separated, ``...`` appended when there are more."""
    return ", ".join(str(value) for value in values[:most]) + (", ..." if len(values) > most else "")


@dataclass(frozen=True)
class LabelScheme:
    """A dataset's labels (nnU-Net's ``labels`` / ``regions_class_order``) and the plugin's facts about them."""

    labels: dict[str, LabelValue]
    regions_class_order: Optional[tuple[int, ...]] = None
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lesion: str = ""
    union_precedence: tuple[str, ...] = ()
    reference_phase: Optional[str] = None

    # ---- reading ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_dataset_json(cls, dataset_json: Mapping, where: str = "dataset.json") -> "LabelScheme":
        """The scheme of a dataset.json dict; HPNInputError naming ``where`` for anything inconsistent."""
        if not isinstance(dataset_json, Mapping) or not isinstance(dataset_json.get("labels"), Mapping):
            raise HPNInputError(f"{where}: no 'labels' object")
        facts = dataset_json.get(HPN_KEY, {})
        if not isinstance(facts, Mapping):
            raise HPNInputError(f"{where}: '{HPN_KEY}' must be an object")
        return cls.build(dataset_json["labels"], dataset_json.get("regions_class_order"), facts.get("targets"),
                         facts.get("lesion"), facts.get("union_precedence"), facts.get("reference_phase"), where)

    @classmethod
    def read(cls, path: Path) -> "LabelScheme":
        """The scheme of a dataset.json file (HPNInputError naming it when missing or unreadable)."""
        return cls.from_dataset_json(_read_json(Path(path)), str(path))

    @classmethod
    def from_labels_file(cls, path: Path) -> "LabelScheme":
        """``convert --labels``: dataset.json's ``labels`` object on its own, or ``{"labels": {...}}`` with
        ``regions_class_order``, ``targets``, ``lesion`` and ``union_precedence`` beside it."""
        path = Path(path)
        data = _read_json(path)
        if not isinstance(data, Mapping):
            raise HPNInputError(f"{path}: expected a JSON object of label names")
        if not isinstance(data.get("labels"), Mapping):
            data = {"labels": data}
        unknown = sorted(set(data) - set(LABELS_FILE_KEYS))
        if unknown:
            raise HPNInputError(f"{path}: unknown key(s) {unknown}; expected {list(LABELS_FILE_KEYS)}")
        return cls.build(data["labels"], data.get("regions_class_order"), data.get("targets"), data.get("lesion"),
                         data.get("union_precedence"), None, str(path))

    @classmethod
    def build(cls, labels: Mapping, regions_class_order: Optional[Sequence[int]] = None,
              targets: Optional[Mapping[str, Sequence[str]]] = None, lesion: Optional[str] = None,
              union_precedence: Optional[Sequence[str]] = None, reference_phase: Optional[str] = None,
              where: str = "labels") -> "LabelScheme":
        """A checked scheme; facts left None take their defaults (the preset's for the paper's labels)."""
        parsed = _parse_labels(labels, where)
        regions = any(isinstance(value, tuple) for value in parsed.values())
        if regions:
            if regions_class_order is None:
                raise HPNInputError(f"{where}: region-based labels (lists of values) need 'regions_class_order'")
            if (not isinstance(regions_class_order, (list, tuple)) or not all(map(_is_int, regions_class_order))
                    or len(regions_class_order) != len(parsed) - 1):
                raise HPNInputError(f"{where}: 'regions_class_order' must list one integer per region "
                                    f"({len(parsed) - 1}), got {regions_class_order!r}")
            order: Optional[tuple[int, ...]] = tuple(int(v) for v in regions_class_order)
        else:
            if regions_class_order is not None:
                raise HPNInputError(f"{where}: 'regions_class_order' is only for region-based labels (lists)")
            order = None
            values = sorted(parsed.values())
            if values != list(range(len(values))):
                raise HPNInputError(f"{where}: label values {values} must be consecutive from 0 (as nnU-Net needs)")
        if reference_phase is not None and not isinstance(reference_phase, str):
            raise HPNInputError(f"{where}: reference_phase must be a phase name, got {reference_phase!r}")
        if targets is None and lesion is None and union_precedence is None and parsed == PDAC_LABELS:
            return cls(dict(PDAC_LABELS), None, dict(PDAC_TARGETS), PDAC_LESION, PDAC_PRECEDENCE, reference_phase)
        foreground = [name for name in parsed if name != "background"]
        checked_targets = _parse_targets(targets, foreground, where)
        if lesion is None:
            lesion = next(iter(checked_targets))
        if not isinstance(lesion, str) or lesion not in checked_targets:
            raise HPNInputError(f"{where}: lesion {lesion!r} is not one of the targets {list(checked_targets)}")
        if regions:
            if union_precedence is not None:
                raise HPNInputError(f"{where}: 'union_precedence' is for label maps; a region-based union is taken "
                                    f"per region and painted in regions_class_order")
            precedence: tuple[str, ...] = ()
        else:
            precedence = _parse_precedence(union_precedence, foreground, where)
        return cls(parsed, order, checked_targets, lesion, precedence, reference_phase)

    # ---- what the scheme says ---------------------------------------------------------------------------------------
    @property
    def has_regions(self) -> bool:
        return self.regions_class_order is not None

    @property
    def foreground(self) -> list[str]:
        """Foreground label (or region) names in dataset.json order."""
        return [name for name in self.labels if name != "background"]

    def label_values(self, name: str) -> tuple[int, ...]:
        """Voxel values of one label (one value) or region (its values)."""
        value = self.labels[name]
        return value if isinstance(value, tuple) else (value,)

    @property
    def values(self) -> list[int]:
        """Every value a label map of this scheme may hold (ground truth or prediction), sorted."""
        found = {0} | {v for name in self.labels for v in self.label_values(name)}
        if self.regions_class_order is not None:
            found |= set(self.regions_class_order)
        return sorted(found)

    def values_of(self, names: Iterable[str]) -> tuple[int, ...]:
        """Sorted values of the union of the named labels."""
        return tuple(sorted({v for name in names for v in self.label_values(name)}))

    @property
    def target_values(self) -> dict[str, tuple[int, ...]]:
        """Target name -> the label values whose union is its mask, in target order."""
        return {name: self.values_of(members) for name, members in self.targets.items()}

    @property
    def lesion_values(self) -> tuple[int, ...]:
        return self.target_values[self.lesion]

    @property
    def foreground_values(self) -> tuple[int, ...]:
        """Values of every foreground label: the mask of "anything segmented"."""
        return self.values_of(self.foreground)

    def class_index(self, name: str) -> int:
        """The network's output channel of a label (its value) or region (its position among the regions)."""
        if name not in self.labels or name == "background" and self.has_regions:
            raise KeyError(f"{name!r} is not a {'region' if self.has_regions else 'label'} of {list(self.labels)}")
        return self.foreground.index(name) if self.has_regions else int(self.labels[name])

    @property
    def output_values(self) -> dict[int, str]:
        """Value in a predicted label map -> its label's (region's) name: the label values, or for regions the value
        nnU-Net paints each region with (``regions_class_order``; later regions overwrite earlier ones)."""
        if self.regions_class_order is not None:
            return {int(value): name for value, name in zip(self.regions_class_order, self.foreground)}
        return {int(self.labels[name]): name for name in self.foreground}

    def per_class(self, by_name: Mapping[str, float], default: float = 1.0, where: str = "per-class setting"
                  ) -> list[float]:
        """One value per network output channel (:meth:`class_index`: labels incl. background, or regions) from
        values keyed by label name, ``default`` for the others; KeyError naming ``where`` for an unknown name."""
        values = [float(default)] * (len(self.foreground) if self.has_regions else len(self.labels))
        for name, value in by_name.items():
            try:
                values[self.class_index(name)] = float(value)
            except KeyError:
                raise KeyError(f"{where}: {name!r} is not a {'region' if self.has_regions else 'label'} of the "
                               f"dataset ({', '.join(self.labels)})") from None
        return values

    @property
    def nnunet_regions_or_labels(self) -> dict[str, Union[int, tuple[int, ...]]]:
        """Name -> what nnU-Net's ``compute_metrics_on_folder`` scores (a label value, or a region's values)."""
        return {name: self.labels[name] for name in self.foreground}

    def unexpected_values(self, voxels: np.ndarray, where: str) -> list[int]:
        """The distinct values of ``voxels`` (any shape) outside :attr:`values`, sorted; empty for a valid label map.
        HPNInputError naming ``where`` when a value is not a whole number."""
        present = np.unique(voxels)
        fractional = present[present != np.round(present)]
        if fractional.size:
            raise HPNInputError(f"{where}: label map contains non-integer values (e.g. {float(fractional[0])!r}); "
                                f"labels must be whole numbers in {self.values}")
        return [int(value) for value in np.setdiff1d(present, self.values)]

    def check_values(self, voxels: np.ndarray, where: str) -> None:
        """HPNInputError ``<where>: label values {..} outside [..]`` when ``voxels`` hold values outside
        :attr:`values` (the wording of convert's label check); non-integer values as :meth:`unexpected_values`."""
        unexpected = self.unexpected_values(voxels, where)
        if unexpected:
            raise HPNInputError(f"{where}: label values {{{_shown(unexpected)}}} outside {self.values}")

    def check_label_map(self, voxels: np.ndarray, where: str) -> None:
        """HPNInputError ``<where>: unexpected labels [..], expected only [..]`` when ``voxels`` hold values outside
        :attr:`values` (the wording of label maps read for evaluation, union, splits and registration QC);
        non-integer values as :meth:`unexpected_values`."""
        unexpected = self.unexpected_values(voxels, where)
        if unexpected:
            raise HPNInputError(f"{where}: unexpected labels [{_shown(unexpected)}], expected only {self.values}")

    def dataset_json_fields(self) -> dict[str, Any]:
        """``labels`` (and ``regions_class_order``) as nnU-Net reads them, and the ``"hpn"`` facts."""
        fields: dict[str, Any] = {"labels": {name: list(value) if isinstance(value, tuple) else value
                                             for name, value in self.labels.items()}}
        if self.regions_class_order is not None:
            fields["regions_class_order"] = list(self.regions_class_order)
        facts: dict[str, Any] = {"targets": {name: list(members) for name, members in self.targets.items()},
                                 "lesion": self.lesion}
        if self.union_precedence:
            facts["union_precedence"] = list(self.union_precedence)
        if self.reference_phase is not None:
            facts["reference_phase"] = self.reference_phase
        fields[HPN_KEY] = facts
        return fields


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise HPNInputError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HPNInputError(f"{path}: not readable JSON ({error})") from None


def _parse_labels(labels: Mapping, where: str) -> dict[str, LabelValue]:
    if not isinstance(labels, Mapping) or not labels:
        raise HPNInputError(f"{where}: 'labels' must be a non-empty object of name -> value")
    parsed: dict[str, LabelValue] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)) and value and all(map(_is_int, value)):
            parsed[str(name)] = tuple(int(v) for v in value)
        elif _is_int(value):
            parsed[str(name)] = int(value)
        else:
            raise HPNInputError(f"{where}: label {name!r}: value {value!r} is not an integer or a list of integers")
        if any(v < 0 for v in (parsed[name] if isinstance(parsed[name], tuple) else (parsed[name],))):
            raise HPNInputError(f"{where}: label {name!r}: negative value {value!r}")
    if parsed.get("background") != 0:
        raise HPNInputError(f"{where}: 'labels' needs \"background\": 0 (as nnU-Net does)")
    if len(parsed) < 2:
        raise HPNInputError(f"{where}: 'labels' has no foreground label")
    return parsed


def _parse_targets(targets: Optional[Mapping], foreground: list[str], where: str) -> dict[str, tuple[str, ...]]:
    if targets is None:
        return {name: (name,) for name in foreground}
    if not isinstance(targets, Mapping) or not targets:
        raise HPNInputError(f"{where}: 'targets' must be a non-empty object of target -> list of label names")
    parsed = {}
    for name, members in targets.items():
        if isinstance(members, str):
            members = [members]
        if not isinstance(members, (list, tuple)) or not members:
            raise HPNInputError(f"{where}: target {name!r} must list label names, got {members!r}")
        unknown = [member for member in members if member not in foreground]
        if unknown:
            raise HPNInputError(f"{where}: target {name!r} names {unknown}, not foreground labels {foreground}")
        parsed[str(name)] = tuple(members)
    return parsed


def _parse_precedence(precedence: Optional[Sequence[str]], foreground: list[str], where: str) -> tuple[str, ...]:
    if precedence is None:
        return tuple(reversed(foreground))
    if (not isinstance(precedence, (list, tuple)) or sorted(precedence) != sorted(foreground)):
        raise HPNInputError(f"{where}: 'union_precedence' must list every foreground label once, first wins "
                            f"({foreground}), got {precedence!r}")
    return tuple(precedence)


#: The paper's labels (dataset.json ``labels`` of every PDAC dataset convert writes by default).
PDAC_LABELS: dict[str, LabelValue] = {"background": 0, "pancreas": 1, "PDAC": 2, "duct": 3}
PDAC_TARGETS: dict[str, tuple[str, ...]] = {"abnormal pancreas": ("pancreas", "PDAC", "duct"), "PDAC": ("PDAC",),
                                            "duct": ("duct",)}
PDAC_LESION = "PDAC"
PDAC_PRECEDENCE: tuple[str, ...] = ("PDAC", "duct", "pancreas")
#: The built-in preset: the paper's scheme (targets abnormal pancreas = 1 ∪ 2 ∪ 3, PDAC, duct;
#: PDAC > duct > pancreas).
PDAC_SCHEME = LabelScheme(dict(PDAC_LABELS), None, dict(PDAC_TARGETS), PDAC_LESION, PDAC_PRECEDENCE)


def dataset_json_candidates(*folders: Optional[Path]) -> list[Path]:
    """Where a dataset.json "beside" each folder may lie: in it, then in its parent (``labelsTr/..``, a model's
    ``fold_0/..``), in the order of ``folders``."""
    found: list[Path] = []
    for folder in folders:
        if folder is None:
            continue
        folder = Path(folder)
        for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
            if candidate not in found:
                found.append(candidate)
    return found


def resolve_scheme(djfile: Optional[Path] = None, beside: Sequence[Optional[Path]] = ()) -> LabelScheme:
    """The scheme of ``djfile`` (``-djfile``, which must exist), else of the first dataset.json of
    :func:`dataset_json_candidates` (``beside``) that has ``labels``, else :data:`PDAC_SCHEME`."""
    if djfile is not None:
        return LabelScheme.read(Path(djfile))
    for candidate in dataset_json_candidates(*beside):
        if candidate.is_file():
            data = _read_json(candidate)
            if isinstance(data, Mapping) and "labels" in data:
                return LabelScheme.from_dataset_json(data, str(candidate))
    return PDAC_SCHEME


def dataset_reference_phase(dataset_json: Mapping, requested: Optional[str] = None,
                            where: str = "dataset.json") -> str:
    """The reference phase of a dataset.json's channels: ``requested``, else the one stored under ``"hpn"``
    (``convert --reference-phase`` writes it), else :func:`nnunet_hpn.phases.reference_phase`'s rule."""
    facts = dataset_json.get(HPN_KEY)
    stored = facts.get("reference_phase") if isinstance(facts, Mapping) else None
    return reference_phase(channel_names(dataset_json), requested or stored, where)
