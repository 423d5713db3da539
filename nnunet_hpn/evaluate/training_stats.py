"""Statistics whose unit is the training, for cross-validation tables trained with several seeds.

A failed training sinks every case of its fold at once, so per-case tests (``report.paired_wilcoxon``) treat
correlated cases as independent. Here the scores of one method are ``scores[fold][seed][case]`` (one training per
fold and seed, scored on the fold's validation cases), and:

- :func:`cross_validation_mean`: the mean over folds of the mean over the fold's trainings of the mean over its
  cases (every fold weighs the same);
- :func:`hierarchical_bootstrap_difference`: mean difference of two methods with a percentile interval from a
  two-level bootstrap — within every fold, the trainings (seeds) of each method are resampled with replacement, and
  the fold's cases are resampled with replacement (the same draw for both methods, so the comparison stays paired
  by case); the folds themselves are the design, not resampled;
- :func:`seed_spread`: how much a second training of the same method moves its numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

#: scores[fold][seed][case] -> value (e.g. Dice of one target)
Scores = Mapping[int, Mapping[int, Mapping[str, float]]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided percentile interval (``confidence``, e.g. 0.95)."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int


@dataclass(frozen=True)
class SeedSpread:
    """Seed-to-seed spread of one method: ``per_seed`` the cross-validation mean of the trainings with each seed,
    ``range`` max − min of those, ``mean_fold_range`` the mean over folds of (max − min over the fold's seeds)."""

    per_seed: dict[int, float]
    range: float
    mean_fold_range: float


def _fold_matrix(scores: Scores, fold: int, cases: list[str]) -> np.ndarray:
    """(seeds, cases) array of one fold, seeds in sorted order."""
    by_seed = scores[fold]
    if not by_seed:
        raise ValueError(f"fold {fold}: no trainings")
    return np.array([[by_seed[seed][case] for case in cases] for seed in sorted(by_seed)], dtype=float)


def _fold_cases(scores: Scores, fold: int) -> list[str]:
    """The cases every training of ``fold`` scored (they must be the same)."""
    sets = {frozenset(values) for values in scores[fold].values()}
    if len(sets) != 1:
        raise ValueError(f"fold {fold}: the trainings were scored on different cases")
    return sorted(next(iter(sets)))


def cross_validation_mean(scores: Scores) -> float:
    """Mean over folds of (mean over the fold's trainings of the mean over its cases)."""
    return float(np.mean([_fold_matrix(scores, fold, _fold_cases(scores, fold)).mean() for fold in sorted(scores)]))


def hierarchical_bootstrap_difference(a: Scores, b: Scores, n_resamples: int = 10000, confidence: float = 0.95,
                                      seed: int = 0) -> Interval:
    """Cross-validation mean of ``a`` minus that of ``b`` with a hierarchical-bootstrap percentile interval.

    ``a`` and ``b`` have the same folds, and within a fold the same cases; their seeds need not match (the trainings
    of two methods are independent). Per resample and fold: ``n_cases`` cases drawn with replacement (shared by
    both methods), and for each method as many of its trainings as it has, drawn with replacement; the method's
    fold value is the mean over the drawn trainings of their mean over the drawn cases.
    """
    if sorted(a) != sorted(b) or not a:
        raise ValueError(f"the two methods have different folds: {sorted(a)} vs {sorted(b)}")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"n_resamples {n_resamples} must be >= 1 and confidence {confidence} in (0, 1)")
    rng = np.random.default_rng(seed)
    differences = np.zeros(n_resamples)
    for fold in sorted(a):
        cases = _fold_cases(a, fold)
        if cases != _fold_cases(b, fold):
            raise ValueError(f"fold {fold}: the two methods were scored on different cases")
        case_draw = rng.integers(0, len(cases), size=(n_resamples, len(cases)))  # (R, n)
        for sign, scores in ((1.0, a), (-1.0, b)):
            matrix = _fold_matrix(scores, fold, cases)  # (S, n)
            per_training = matrix[:, case_draw].mean(axis=2)  # (S, R): every training on every case draw
            seed_draw = rng.integers(0, matrix.shape[0], size=(n_resamples, matrix.shape[0]))  # (R, S)
            fold_value = np.take_along_axis(per_training.T, seed_draw, axis=1).mean(axis=1)  # (R,)
            differences += sign * fold_value / len(a)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(differences, [tail, 100 - tail])
    return Interval(cross_validation_mean(a) - cross_validation_mean(b), float(low), float(high), confidence,
                    n_resamples)


def seed_spread(scores: Scores) -> SeedSpread:
    """Per-seed cross-validation means (every fold must have every seed) and their ranges."""
    seeds = sorted({seed for by_seed in scores.values() for seed in by_seed})
    missing = [(fold, seed) for fold in sorted(scores) for seed in seeds if seed not in scores[fold]]
    if missing:
        raise ValueError(f"no training for (fold, seed) {missing}")
    per_seed = {seed: float(np.mean([np.mean(list(scores[fold][seed].values())) for fold in sorted(scores)]))
                for seed in seeds}
    fold_ranges = [np.ptp([np.mean(list(scores[fold][seed].values())) for seed in seeds]) for fold in sorted(scores)]
    return SeedSpread(per_seed, float(max(per_seed.values()) - min(per_seed.values())), float(np.mean(fold_ranges)))
