"""The options that several ``nnunet-hpn`` subcommands share, each spelled and described in one place, with the
argparse types that check numbers while the options are parsed.

One spelling per idea, as nnU-Net's commands spell it where they have the idea: ``-d/--dataset``, ``-c`` a
configuration, ``-f/--folds`` a list of folds, ``-p/--plans``, ``-np`` processes. An older spelling is kept as a
hidden alias (:func:`add_option`'s ``old``): it parses to the same value, is left out of ``--help``, and giving both
spellings is an error.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Optional, Sequence

from nnunet_hpn.phases import PHASES

#: Trainer of an HPN model, as ``-tr`` defaults to it.
DEFAULT_TRAINER = "HPNTrainer"

UNUSUAL_INTENSITIES_HELP = ("accept phase images whose values do not look like CT in HU (few distinct values, far "
                            "outside -4096..40000, or no value below 0 with a median above 500 as when the rescale "
                            "intercept is missing): for unusual but real data")
#: Help of ``-djfile``; ``%s``: where the dataset.json is looked for.
DJFILE_HELP = ("dataset.json whose label scheme to use (nnU-Net's -djfile; default: the dataset.json beside %s, else "
               "the paper's pancreas / PDAC / duct)")


def whole(low: int, high: int) -> Callable[[str], int]:
    """argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number in {low}..{high}, got {text}")
        return value
    return parse


def real(low: float, high: float, low_open: bool = False, unit: str = "") -> Callable[[str], float]:
    """argparse type: a finite number in [low, high] (``low_open``: (low, high])."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ((low < value) if low_open else (low <= value)) or not value <= high:
            raise argparse.ArgumentTypeError(f"must be a number in {'(' if low_open else '['}{low:g}, {high:g}]"
                                             f"{unit}, got {text}")
        return value
    return parse


def tolerance_mm(text: str) -> float:
    """argparse type of ``--tolerance-mm``: a finite number of mm, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of mm, 0 or more, got {text}")
    return value


#: Counts of processes, threads and parts.
positive_int = whole(1, 4096)
#: Seeds of NumPy's generators.
seed = whole(0, 2 ** 32 - 1)
#: A margin around a box (crop, locator): more than 0, at most a metre.
margin_mm = real(0.0, 1000.0, low_open=True, unit=" mm")


def as_typed(value: Any) -> str:
    """A default as it is typed on the command line: a list as its items separated by spaces."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_default(help_text: str, default: Any) -> str:
    """``help_text`` followed by ``(default: …)`` written as typed."""
    return f"{help_text} (default: {as_typed(default)})"


def shows_default(default: Any, action: Any = None) -> bool:
    """Whether ``--help`` states this default: not for "none given" (None, an empty list, SUPPRESS) nor for a flag."""
    if action in ("store_true", "store_false", "version", "help"):
        return False
    return default is not None and default is not argparse.SUPPRESS and default != [] and default != ()


def add_option(parser: argparse.ArgumentParser, *flags: str, old: Sequence[str] = (), required: bool = False,
               **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)``, the default (where :func:`shows_default`) added to the help text;
    with ``old``, those older option strings as a hidden alias: the same destination, type and choices, not in
    ``--help``, and an error together with ``flags``."""
    if kwargs.get("help") and shows_default(kwargs.get("default"), kwargs.get("action")):
        kwargs["help"] = with_default(kwargs["help"], kwargs["default"])
    if not old:
        return parser.add_argument(*flags, required=required, **kwargs)
    group = parser.add_mutually_exclusive_group(required=required)
    action = group.add_argument(*flags, **kwargs)
    group.add_argument(*old, dest=action.dest, type=action.type, choices=action.choices, nargs=action.nargs,
                       metavar=action.metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return action


def add_dataset(parser: argparse.ArgumentParser, help_text: str = "dataset id or name (as nnU-Net's -d)", *,
                required: bool = True, **kwargs: Any) -> argparse.Action:
    """``-d/--dataset``: an nnU-Net dataset."""
    return add_option(parser, "-d", "--dataset", required=required, help=help_text, **kwargs)


def add_plans(parser: argparse.ArgumentParser, help_text: str = "plans identifier (as nnU-Net's -p)") -> None:
    """``-p/--plans``: the plans of the dataset (default: HPNPlanner's)."""
    from nnunet_hpn.nnunet.planners.hpn_planner import HPN_PLANS_NAME

    add_option(parser, "-p", "--plans", default=HPN_PLANS_NAME, help=help_text)


def add_folds(parser: argparse.ArgumentParser, *flags: str, help_text: str) -> None:
    """Folds of a trained model, as nnU-Net's ``-f``: one or more fold numbers (or ``all``); default fold 0."""
    add_option(parser, *flags, nargs="+", default=["0"], metavar="FOLD", help=help_text)


def add_phases(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--phases``: phase names in channel order (default :data:`nnunet_hpn.phases.PHASES`)."""
    add_option(parser, "--phases", nargs="+", default=list(PHASES), metavar="PHASE", help=help_text)


def add_registration_method(parser: argparse.ArgumentParser, methods: Sequence[str], help_text: str,
                            old: Sequence[str] = ()) -> None:
    """``--registration-method``: how the phases are aligned (default demons)."""
    add_option(parser, "--registration-method", old=old, choices=list(methods), default="demons",
               help=f"{help_text}: {', '.join(methods)}; syn is ANTs SyN and needs antspyx")


def add_processes(parser: argparse.ArgumentParser, help_text: str, default: Optional[int] = 1) -> None:
    """``-np``: worker processes, as nnU-Net's commands call them."""
    add_option(parser, "-np", type=positive_int, default=default, help=help_text)


def add_tolerance(parser: argparse.ArgumentParser) -> None:
    """``--tolerance-mm``: the tolerance of the normalised surface Dice."""
    from nnunet_hpn.evaluate.metrics import DEFAULT_TOLERANCE_MM

    add_option(parser, "--tolerance-mm", type=tolerance_mm, default=DEFAULT_TOLERANCE_MM, help="NSD tolerance in mm")


def add_seed(parser: argparse.ArgumentParser, default: int, help_text: str = "random seed") -> None:
    """``--seed``: a seed of NumPy's generators."""
    add_option(parser, "--seed", type=seed, default=default, help=help_text)


def add_djfile(parser: argparse.ArgumentParser, beside: str) -> None:
    """``-djfile``: the dataset.json whose label scheme to use; ``beside``: where it is looked for by default."""
    add_option(parser, "-djfile", metavar="DATASET_JSON", help=DJFILE_HELP % beside)


def add_unusual_intensities(parser: argparse.ArgumentParser) -> None:
    """``--allow-unusual-intensities``: accept phase images that do not look like CT in HU."""
    add_option(parser, "--allow-unusual-intensities", action="store_true", help=UNUSUAL_INTENSITIES_HELP)
