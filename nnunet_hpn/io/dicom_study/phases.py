"""Contrast phases of a study's candidate volumes, from timing tags with the image as second opinion.

:func:`identify_phases` names the candidates (:data:`KNOWN_PHASES`, in acquisition order):

* **timing first**: the first of :data:`TIME_TAGS` that every candidate has orders them; candidates acquired within
  :data:`SAME_ACQUISITION_S` of each other are one acquisition (two reconstructions of it are ambiguous). The first
  contrast-enhanced acquisition is arterial, later ones venous, or delayed from :data:`DELAYED_AFTER_ARTERIAL_S`
  after the arterial one. Non-contrast: no ContrastBolusAgent where others have one, or acquired before
  ContrastBolusStartTime; where the tags cannot tell, the image does;
* **the image as second opinion** (:func:`image_evidence`; where timing is missing, where it comes from SeriesTime
  alone, and for non-contrast where the contrast tags are silent): the share of body voxels in
  :data:`ARTERIAL_HU` (opacified aorta and arteries: bright in the arterial phase only) and in :data:`ENHANCED_HU`
  (enhanced liver, portal vein, kidneys, vessels: low without contrast, highest in the portal-venous phase);
* descriptions are free text and never decide; a description naming another phase is noted in the reason.

Ambiguous evidence (two candidates for one phase, no clear image margin) and contradicting evidence (timing
tags disagreeing on the order, an unenhanced scan after an enhanced one, the image against the timing) are one
:class:`~nnunet_hpn.errors.HPNInputError` line naming the series and the evidence, never a guess.

:func:`check_named_order` refuses an assignment whose timing says the opposite (venous acquired before arterial);
:func:`check_series_folders_order` does so for series folders named by phase.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.dicom_study.series import TIME_TAGS, Candidate, Study, read_candidate, scan_study

#: Contrast phases the identification knows, in acquisition order.
KNOWN_PHASES: tuple[str, ...] = ("noncontrast", "arterial", "venous", "delayed")
#: Candidates acquired within this many seconds of each other are one acquisition (e.g. thin and thick slices).
SAME_ACQUISITION_S = 2.0
#: An enhanced acquisition this many seconds or more after the arterial one is delayed, earlier ones venous.
DELAYED_AFTER_ARTERIAL_S = 120.0
#: HU range of opacified arterial blood (aorta in the arterial phase) and of enhanced tissue and blood.
ARTERIAL_HU: tuple[float, float] = (200.0, 450.0)
ENHANCED_HU: tuple[float, float] = (90.0, 450.0)
#: Voxels above this HU are the body (air and the table's surroundings excluded).
BODY_HU = -500.0
#: Image rules (shares of body voxels): unenhanced below UNENHANCED_BELOW x the highest enhanced share of the case,
#: enhanced above ENHANCED_ABOVE x it; arterial when its arterial share (above the case's lowest: bone) is
#: ARTERIAL_RATIO x and ARTERIAL_MARGIN above every other one's; of two later phases the one with VENOUS_RATIO x the
#: other's enhanced share is venous (DELAYED_RATIO x the arterial one's or less: delayed).
UNENHANCED_BELOW, ENHANCED_ABOVE = 0.25, 0.4
ARTERIAL_RATIO, ARTERIAL_MARGIN = 1.5, 0.004
VENOUS_RATIO, DELAYED_RATIO = 1.25, 1.05
#: Words of series descriptions suggesting a phase (only noted in the reasons; descriptions never decide).
DESCRIPTION_WORDS: dict[str, str] = {
    "noncontrast": r"non[- ]?contrast|native|nativ|plain|unenhanced|pre[- ]?contrast|w/?o|\bnc\b|sans",
    "arterial": r"arter|\bart\b|\bap\b|\bca\b|early",
    "venous": r"ven|portal|\bpv\b|\bpvp\b",
    "delayed": r"delay|late|equilib|\bdel\b",
}


@dataclass(frozen=True)
class ImageEvidence:
    """Shares of body voxels in :data:`ARTERIAL_HU` and in :data:`ENHANCED_HU`."""

    arterial_share: float
    enhanced_share: float

    def text(self) -> str:
        return f"arterial-HU share {100 * self.arterial_share:.2f} %, enhanced share {100 * self.enhanced_share:.1f} %"


def image_evidence(image: sitk.Image) -> ImageEvidence:
    """:class:`ImageEvidence` of one volume (HU)."""
    voxels = sitk.GetArrayViewFromImage(image)
    body = voxels[voxels > BODY_HU]
    if body.size == 0:
        return ImageEvidence(0.0, 0.0)
    share = lambda low, high: float(np.count_nonzero((body >= low) & (body <= high)) / body.size)  # noqa: E731
    return ImageEvidence(share(*ARTERIAL_HU), share(*ENHANCED_HU))


@dataclass
class PhaseAssignment:
    """Phase -> candidate of one case, with the reason for each, and the reason each other series is unused."""

    case: str
    phases: dict[str, Candidate]
    reasons: dict[str, str]
    unused: dict[str, str]
    source: str  # "automatic" or the phase map's path

    def record(self, study: Study) -> dict:
        """What the QC JSON keeps: which series became which phase and why, and every other series."""
        return {"case": self.case, "folder": str(study.folder), "source": self.source,
                "phases": {phase: {**candidate.describe(), "reason": self.reasons[phase]}
                           for phase, candidate in self.phases.items()},
                "not_used": {**{c.id: {**c.describe(), "reason": self.unused.get(c.id, "not needed")}
                                for c in study.candidates if c not in self.phases.values()},
                             **{s.series_uid: {"description": s.description, "files": s.files,
                                               "reason": f"set aside: {s.reason}"} for s in study.set_aside}},
                "segmentations": [str(path) for path in study.segmentations]}


def _clock(value: dt.datetime | None) -> str:
    return "no time" if value is None else value.strftime("%H:%M:%S") + (
        f".{value.microsecond // 100000}" if value.microsecond else "")


def _description_phase(description: str) -> str | None:
    hits = [phase for phase, words in DESCRIPTION_WORDS.items() if re.search(words, description, re.IGNORECASE)]
    return hits[0] if len(hits) == 1 else None


def _timing(candidates: Sequence[Candidate]) -> tuple[str | None, str | None]:
    """The timing tag that orders ``candidates`` (first of :data:`TIME_TAGS` on all of them), and a contradiction
    (two tags on all of them ordering them differently), as text, or None."""
    complete = [tag for tag, _ in TIME_TAGS if all(c.time(tag) is not None for c in candidates)]
    if not complete:
        return None, None
    for tag in complete[1:]:
        for a in candidates:
            for b in candidates:
                first, second = (a.time(complete[0]) - b.time(complete[0])).total_seconds(), \
                    (a.time(tag) - b.time(tag)).total_seconds()
                if first > SAME_ACQUISITION_S and second < -SAME_ACQUISITION_S:
                    return complete[0], (f"{complete[0]} puts {a.label} ({_clock(a.time(complete[0]))}) after "
                                         f"{b.label} ({_clock(b.time(complete[0]))}), {tag} before it "
                                         f"({_clock(a.time(tag))} vs {_clock(b.time(tag))})")
    return complete[0], None


def _unenhanced_by_tags(candidates: Sequence[Candidate], tag: str | None) -> dict[str, bool | None]:
    """Non-contrast by the contrast tags: acquired before ContrastBolusStartTime, or without ContrastBolusAgent where
    another candidate has one; None where the tags cannot tell."""
    with_agent = [c for c in candidates if c.contrast_agent]
    verdict: dict[str, bool | None] = {}
    for c in candidates:
        time = c.time(tag) if tag else None
        starts = [o.bolus_start for o in candidates if o.bolus_start is not None]
        if time is not None and starts and time < min(starts):
            verdict[c.id] = True
        elif with_agent and len(with_agent) < len(candidates):
            verdict[c.id] = not c.contrast_agent
        else:
            verdict[c.id] = None
    return verdict


class _Evidence:
    """Image evidence of a case's candidates, read once each when first needed."""

    def __init__(self, read: Callable[[Candidate], sitk.Image]):
        self.read, self.cache = read, {}

    def __call__(self, candidate: Candidate) -> ImageEvidence:
        if candidate.id not in self.cache:
            self.cache[candidate.id] = image_evidence(self.read(candidate))
        return self.cache[candidate.id]


def _unenhanced_by_image(candidates: Sequence[Candidate], evidence: _Evidence, case: str) -> dict[str, bool]:
    """Non-contrast by the image: enhanced share below :data:`UNENHANCED_BELOW` of the case's highest."""
    shares = {c.id: evidence(c).enhanced_share for c in candidates}
    highest = max(shares.values())
    verdict = {}
    for c in candidates:
        ratio = shares[c.id] / highest if highest > 0 else 1.0
        if UNENHANCED_BELOW <= ratio <= ENHANCED_ABOVE or (len(candidates) == 1 and highest == 0):
            raise HPNInputError(f"{case}: cannot tell whether {c.label} ({c.id}) is contrast-enhanced: its "
                                f"{evidence(c).text()}, {100 * ratio:.0f} % of the case's highest and no contrast "
                                f"tags that decide; name the phases in a phase map (--phase-map)")
        verdict[c.id] = ratio < UNENHANCED_BELOW
    return verdict


def _arterial_by_image(candidates: Sequence[Candidate], evidence: _Evidence, case_candidates: Sequence[Candidate]
                       ) -> Candidate | None:
    """The candidate whose arterial share clearly exceeds every other's (:data:`ARTERIAL_RATIO`,
    :data:`ARTERIAL_MARGIN`), or None. Shares count above the lowest of ``case_candidates``: bone in the arterial HU
    range is in every phase alike."""
    baseline = min(evidence(c).arterial_share for c in case_candidates)
    excess = {c.id: evidence(c).arterial_share - baseline for c in candidates}
    ranked = sorted(candidates, key=lambda c: excess[c.id], reverse=True)
    top = excess[ranked[0].id]
    second = excess[ranked[1].id] if len(ranked) > 1 else 0.0
    return ranked[0] if top >= ARTERIAL_RATIO * second and top - second >= ARTERIAL_MARGIN else None


def identify_phases(study: Study, phases: Sequence[str], read: Callable[[Candidate], sitk.Image] = read_candidate
                    ) -> PhaseAssignment:
    """The candidate of every phase in ``phases`` (names from :data:`KNOWN_PHASES`), by the rules of the module
    docstring; one HPNInputError line naming the study folder, the series and the evidence when they are ambiguous
    or contradict each other. ``read`` gives a candidate's volume where the image is needed."""
    case = str(study.folder)  # what the messages name
    unknown = [phase for phase in phases if phase not in KNOWN_PHASES]
    if unknown:
        raise HPNInputError(f"{case}: phase {unknown[0]!r} cannot be identified automatically (known: "
                            f"{', '.join(KNOWN_PHASES)}); name its series in a phase map (--phase-map)")
    candidates = list(study.candidates)
    if not candidates:
        aside = "; ".join(f"{s.description or s.series_uid}: {s.reason}" for s in study.set_aside[:4])
        raise HPNInputError(f"{study.folder}: no axial CT series to use" + (f" (set aside: {aside})" if aside else ""))
    evidence = _Evidence(read)
    tag, contradiction = _timing(candidates)
    if contradiction:
        raise HPNInputError(f"{case}: the timing tags contradict each other: {contradiction}; name the phases in a "
                            f"phase map (--phase-map)")
    if tag is None:
        named, notes = _phases_by_image(candidates, evidence, case)
    else:
        named, notes = _phases_by_time(candidates, tag, evidence, case)
    return _assignment(study, phases, named, notes, tag)


def _phases_by_time(candidates: list[Candidate], tag: str, evidence: _Evidence, case: str
                    ) -> tuple[dict[str, list[Candidate]], dict[str, str]]:
    """Candidates per phase from the timing (acquisitions in time order), the image where the tags cannot tell
    non-contrast, and the image as a check where the time is only SeriesTime."""
    ordered = sorted(candidates, key=lambda c: c.time(tag))
    groups: list[list[Candidate]] = []
    for c in ordered:
        if groups and (c.time(tag) - groups[-1][0].time(tag)).total_seconds() <= SAME_ACQUISITION_S:
            groups[-1].append(c)
        else:
            groups.append([c])
    notes = {c.id: f"acquired {_clock(c.time(tag))} ({tag})" for c in candidates}
    by_tags = _unenhanced_by_tags(candidates, tag)
    if any(value is None for value in by_tags.values()):
        by_image = _unenhanced_by_image(candidates, evidence, case)
        unenhanced = {c.id: by_image[c.id] for c in candidates}
        for c in candidates:
            notes[c.id] += f"; image: {evidence(c).text()} ({'unenhanced' if unenhanced[c.id] else 'enhanced'})"
    else:
        unenhanced = dict(by_tags)
        for c in candidates:
            notes[c.id] += "; no contrast agent" if unenhanced[c.id] else f"; contrast '{c.contrast_agent}'"
    group_unenhanced = []
    for group in groups:
        values = {unenhanced[c.id] for c in group}
        if len(values) > 1:
            raise HPNInputError(f"{case}: {' and '.join(c.label for c in group)} were acquired together "
                                f"({_clock(group[0].time(tag))}, {tag}) but only some look contrast-enhanced")
        group_unenhanced.append(values.pop())
    enhanced_groups = [g for g, flag in zip(groups, group_unenhanced) if not flag]
    if enhanced_groups:
        first_enhanced_time = enhanced_groups[0][0].time(tag)
        late = [g[0] for g, flag in zip(groups, group_unenhanced) if flag and g[0].time(tag) > first_enhanced_time]
        if late:
            raise HPNInputError(f"{case}: {late[0].label} ({late[0].id}) looks unenhanced but was acquired at "
                                f"{_clock(late[0].time(tag))} ({tag}), after the contrast-enhanced "
                                f"{enhanced_groups[0][0].label} at {_clock(first_enhanced_time)}: contradicting "
                                f"evidence; name the phases in a phase map (--phase-map)")
    named: dict[str, list[Candidate]] = {phase: [] for phase in KNOWN_PHASES}
    for group, flag in zip(groups, group_unenhanced):
        if flag:
            named["noncontrast"].append(group)
    for index, group in enumerate(enhanced_groups):
        if index == 0:
            named["arterial"].append(group)
            continue
        delay = (group[0].time(tag) - enhanced_groups[0][0].time(tag)).total_seconds()
        phase = "delayed" if delay >= DELAYED_AFTER_ARTERIAL_S else "venous"
        named[phase].append(group)
        for c in group:
            notes[c.id] += f", {delay:.0f} s after the arterial acquisition"
    if tag == "SeriesTime" and enhanced_groups:  # series creation times: the image must agree
        image_arterial = _arterial_by_image([c for g in enhanced_groups for c in g], evidence, candidates)
        if image_arterial is not None and image_arterial not in enhanced_groups[0]:
            first = enhanced_groups[0][0]
            raise HPNInputError(f"{case}: contradicting evidence: by SeriesTime {first.label} ({first.id}, "
                                f"{_clock(first.time(tag))}) is the arterial phase, by the image {image_arterial.label}"
                                f" ({image_arterial.id}: {evidence(image_arterial).text()} against "
                                f"{evidence(first).text()}); name the phases in a phase map (--phase-map)")
        for c in (c for g in enhanced_groups for c in g):
            notes[c.id] += f"; image: {evidence(c).text()}"
    return {phase: [c for g in groups_ for c in g] if len(groups_) <= 1 else groups_
            for phase, groups_ in named.items()}, notes


def _phases_by_image(candidates: list[Candidate], evidence: _Evidence, case: str
                     ) -> tuple[dict[str, list], dict[str, str]]:
    """Candidates per phase from the image alone (no timing on every candidate)."""
    missing = [c for c in candidates if all(c.time(tag) is None for tag, _ in TIME_TAGS)]
    shown = missing[0] if missing else candidates[0]
    notes = {c.id: f"no timing on every series ({shown.label} has none); image: {evidence(c).text()}"
             for c in candidates}
    by_tags = _unenhanced_by_tags(candidates, None)
    by_image = _unenhanced_by_image(candidates, evidence, case)
    for c in candidates:
        if by_tags[c.id] is not None and by_tags[c.id] != by_image[c.id]:
            raise HPNInputError(f"{case}: contradicting evidence for {c.label} ({c.id}): contrast tags say "
                                f"{'unenhanced' if by_tags[c.id] else 'enhanced'}, the image ({evidence(c).text()}) "
                                f"the opposite; name the phases in a phase map (--phase-map)")
    named: dict[str, list] = {phase: [] for phase in KNOWN_PHASES}
    named["noncontrast"] = [c for c in candidates if by_image[c.id]]
    enhanced = [c for c in candidates if not by_image[c.id]]
    if not enhanced:
        return named, notes
    arterial = _arterial_by_image(enhanced, evidence, candidates)
    if arterial is None:
        shown = ", ".join(f"{c.label} ({c.id}): {evidence(c).text()}" for c in enhanced)
        raise HPNInputError(f"{case}: no timing and no clearly arterial image among {shown}; name the phases in a "
                            f"phase map (--phase-map)")
    named["arterial"] = [arterial]
    later = sorted((c for c in enhanced if c is not arterial), key=lambda c: evidence(c).enhanced_share,
                   reverse=True)
    reference = evidence(arterial).enhanced_share
    if len(later) == 1:
        ratio = evidence(later[0]).enhanced_share / reference if reference else 0.0
        if ratio >= VENOUS_RATIO:
            named["venous"] = later
        elif ratio <= DELAYED_RATIO:
            named["delayed"] = later
        else:
            raise HPNInputError(f"{case}: no timing, and the image of {later[0].label} ({later[0].id}: "
                                f"{evidence(later[0]).text()}) tells neither venous nor delayed against the arterial "
                                f"{arterial.label} ({evidence(arterial).text()}); name it in a phase map "
                                f"(--phase-map)")
    elif len(later) == 2:
        high, low = (evidence(c).enhanced_share for c in later)
        if high < VENOUS_RATIO * low:
            raise HPNInputError(f"{case}: no timing, and the images of {later[0].label} ({later[0].id}) and "
                                f"{later[1].label} ({later[1].id}) do not tell which is venous "
                                f"({evidence(later[0]).text()}; {evidence(later[1]).text()}); name them in a phase "
                                f"map (--phase-map)")
        named["venous"], named["delayed"] = [later[0]], [later[1]]
    elif later:
        raise HPNInputError(f"{case}: no timing and {len(later) + 1} contrast-enhanced series "
                            f"({', '.join(c.label for c in enhanced)}); the image alone cannot order them; name "
                            f"the phases in a phase map (--phase-map)")
    return named, notes


def _assignment(study: Study, phases: Sequence[str], named: Mapping[str, list], notes: Mapping[str, str],
                tag: str | None) -> PhaseAssignment:
    """One candidate per wanted phase, or one HPNInputError line (none, or several acquisitions / series)."""
    chosen, reasons = {}, {}
    for phase in phases:
        found = named.get(phase, [])
        if found and isinstance(found[0], list):  # several acquisitions in this phase's window
            shown = "; ".join(" + ".join(f"{c.label} ({c.id}) {_clock(c.time(tag))}" for c in g) for g in found)
            raise HPNInputError(f"{study.folder}: {len(found)} acquisitions could be the {phase} phase ({shown}); "
                                f"name the phases in a phase map (--phase-map)")
        if not found:
            seen = "; ".join(f"{c.label} ({c.id}): {notes[c.id]}" for c in study.candidates)
            raise HPNInputError(f"{study.folder}: no {phase} series found (candidates: {seen})")
        if len(found) > 1:
            shown = " and ".join(f"{c.label} ({c.id}, {c.slice_thickness} mm)" for c in found)
            raise HPNInputError(f"{study.folder}: {shown} are both the {phase} acquisition "
                                f"({notes[found[0].id]}); choose one in a phase map (--phase-map)")
        candidate = found[0]
        chosen[phase] = candidate
        reasons[phase] = f"{candidate.label}: {phase}, {notes[candidate.id]}" + _description_note(candidate, phase)
    unused = {}
    for c in study.candidates:
        if c not in chosen.values():
            phase = next((p for p, found in named.items() if c in [x for g in found for x in
                                                                    (g if isinstance(g, list) else [g])]), None)
            unused[c.id] = f"{c.label}: " + (f"{phase}, not a phase of the dataset" if phase else "not needed") + \
                f"; {notes.get(c.id, '')}"
    return PhaseAssignment(study.case, chosen, reasons, unused, "automatic")


def _description_note(candidate: Candidate, phase: str) -> str:
    said = _description_phase(candidate.description)
    return f"; its description suggests {said} (descriptions do not decide)" if said and said != phase else ""


def check_named_order(named: Mapping[str, Candidate], where: str) -> None:
    """HPNInputError when two phases given by name were acquired in the wrong order (by the first timing tag both
    have): e.g. the series called venous acquired before the one called arterial."""
    known = [(KNOWN_PHASES.index(phase), phase, c) for phase, c in named.items() if phase in KNOWN_PHASES]
    for index_a, phase_a, a in known:
        for index_b, phase_b, b in known:
            if index_a >= index_b:
                continue
            tag = next((tag for tag, _ in TIME_TAGS if a.time(tag) is not None and b.time(tag) is not None), None)
            if tag and (a.time(tag) - b.time(tag)).total_seconds() > SAME_ACQUISITION_S:
                raise HPNInputError(f"{where}: the {phase_b} series {b.label} ({b.id}) was acquired at "
                                    f"{_clock(b.time(tag))}, before the {phase_a} series {a.label} ({a.id}) at "
                                    f"{_clock(a.time(tag))} ({tag}); swapped phases?")


def check_series_folders_order(phase_inputs: Mapping[str, Path]) -> None:
    """:func:`check_named_order` for phases given as DICOM series folders (other inputs carry no timing)."""
    named = {}
    for phase, path in phase_inputs.items():
        if Path(path).is_dir():
            study = scan_study(Path(path))
            if len(study.candidates) == 1:
                named[phase] = study.candidates[0]
    where = ", ".join(f"{phase}={phase_inputs[phase]}" for phase in named)
    check_named_order(named, where)
