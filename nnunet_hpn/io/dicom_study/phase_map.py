"""The phase map: the phase assignments of studies written for review, edited and read back.

The outcome of the identification is a phase map (:func:`phase_map_rows`, :func:`phase_map_text`; CSV
``case,phase,series,reason``, one row per series of the case, the phase empty where the series is not used) that a
user reviews, edits and passes back (:func:`read_phase_map`): its assignments replace the automatic ones
(:func:`assignment_from_map`), but an assignment whose timing says the opposite (venous acquired before arterial,
:func:`~nnunet_hpn.io.dicom_study.phases.check_named_order`) is refused with the times shown.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Mapping, Sequence


from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.dicom_study.series import Study
from nnunet_hpn.io.dicom_study.phases import PhaseAssignment, check_named_order

#: Columns of the phase map CSV.
PHASE_MAP_COLUMNS: tuple[str, ...] = ("case", "phase", "series", "reason")


def phase_map_rows(study: Study, assignment: PhaseAssignment | None, error: str | None = None) -> list[dict]:
    """Rows of the phase map for one case: every candidate and set-aside series, the phase where assigned."""
    rows = []
    chosen = {c.id: phase for phase, c in (assignment.phases.items() if assignment else ())}
    for c in study.candidates:
        if c.id in chosen:
            reason = assignment.reasons[chosen[c.id]]
        elif assignment is not None:
            reason = assignment.unused.get(c.id, "not needed")
        else:
            reason = f"{c.label}: {error}" if error else c.label
        rows.append({"case": study.case, "phase": chosen.get(c.id, ""), "series": c.id, "reason": reason})
    for s in study.set_aside:
        rows.append({"case": study.case, "phase": "", "series": s.series_uid,
                     "reason": f"set aside: {s.reason} ('{s.description}', {s.files} file(s))"})
    return rows


def phase_map_text(rows: Iterable[Mapping[str, str]]) -> str:
    """The rows as CSV text with the header :data:`PHASE_MAP_COLUMNS`."""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, PHASE_MAP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def read_phase_map(path: Path) -> dict[str, dict[str, str]]:
    """case -> phase -> series id of a phase map (rows with an empty phase left out); HPNInputError naming the file
    and the line for a missing column or a phase given twice."""
    path = Path(path)
    if not path.is_file():
        raise HPNInputError(f"{path}: phase map is missing")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        raise HPNInputError(f"{path}: phase map is unreadable (expected CSV text)") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in ("case", "phase", "series") if column not in (reader.fieldnames or [])]
    if missing:
        raise HPNInputError(f"{path}: phase map lacks the column(s) {', '.join(missing)} (header: "
                            f"{','.join(PHASE_MAP_COLUMNS)})")
    cases: dict[str, dict[str, str]] = {}
    for line, row in enumerate(reader, start=2):
        case, phase, series = ((row.get(key) or "").strip() for key in ("case", "phase", "series"))
        if not phase:
            continue
        if not case or not series:
            raise HPNInputError(f"{path}: line {line}: phase {phase!r} without case or series")
        if phase in cases.setdefault(case, {}):
            raise HPNInputError(f"{path}: line {line}: case {case} has a second {phase} series")
        cases[case][phase] = series
    return cases


def assignment_from_map(study: Study, phases: Sequence[str], chosen: Mapping[str, str], map_path: Path
                        ) -> PhaseAssignment:
    """The phase map's assignment of one case, checked: every phase once, known series that are candidates, and
    the timing of the named phases in order (:func:`check_named_order`)."""
    where = f"{map_path}: case {study.case}"
    extra = sorted(set(chosen) - set(phases))
    if extra:
        raise HPNInputError(f"{where}: phase {extra[0]!r} is not one of the dataset's phases ({', '.join(phases)})")
    absent = [phase for phase in phases if phase not in chosen]
    if absent:
        raise HPNInputError(f"{where}: no series given for the {absent[0]} phase")
    named = {}
    for phase in phases:
        candidate = study.candidate(chosen[phase])
        if candidate is None:
            aside = next((s for s in study.set_aside if s.series_uid == chosen[phase]), None)
            problem = f"is set aside ({aside.reason})" if aside else "is not a series of the case"
            raise HPNInputError(f"{where}: the {phase} series {chosen[phase]} {problem}")
        named[phase] = candidate
    if len({c.id for c in named.values()}) < len(named):
        raise HPNInputError(f"{where}: one series is given for two phases")
    check_named_order(named, where)
    reasons = {phase: f"{c.label}: {phase}, as the phase map {map_path} says" for phase, c in named.items()}
    unused = {c.id: f"{c.label}: not in the phase map" for c in study.candidates if c not in named.values()}
    return PhaseAssignment(study.case, named, reasons, unused, str(map_path))
