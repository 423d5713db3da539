"""One spelling per idea on the ``nnunet-hpn`` command line: the older spellings still parse to the same values
(hidden from ``--help``), every ``--help`` states its defaults and describes its positionals, ``--version``."""
import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import nnunet_hpn
from nnunet_hpn.cli import build_parser, main
from nnunet_hpn.cli_options import as_typed, shows_default
from nnunet_hpn.phases import PHASES


def _subparsers(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = sorted(_subparsers(build_parser()))

#: old spelling -> (the rest of a command line, old flag, new flag, a value): both flags parse to the same namespace.
OLD_SPELLINGS: Dict[str, Tuple[List[str], str, str, str]] = {
    "convert --dataset-id": (["convert", "in", "--name", "X"], "--dataset-id", "--dataset", "7"),
    "register --method": (["register", "--fixed", "a", "--moving", "v", "-o", "o"], "--method",
                          "--registration-method", "affine"),
    "predict --registration": (["predict", "-i", "in", "-m", "m", "-o", "o"], "--registration",
                               "--registration-method", "none"),
    "split --folds": (["split", "-d", "7"], "--folds", "--n-folds", "5"),
    "cpu-config -c": (["cpu-config", "-d", "7"], "-c", "--name", "3d_small"),
}


@pytest.mark.parametrize("spelling", sorted(OLD_SPELLINGS))
def test_old_spelling_parses_as_the_new_one(spelling: str) -> None:
    rest, old, new, value = OLD_SPELLINGS[spelling]
    parser = build_parser()
    assert vars(parser.parse_args(rest + [old, value])) == vars(parser.parse_args(rest + [new, value]))


@pytest.mark.parametrize("spelling", sorted(OLD_SPELLINGS))
def test_old_spelling_is_hidden_from_help_and_not_allowed_with_the_new_one(spelling: str, capsys) -> None:
    rest, old, new, value = OLD_SPELLINGS[spelling]
    help_text = _subparsers(build_parser())[rest[0]].format_help()
    assert not re.search(rf"(^|[\s,\[]){re.escape(old)}[\s,\]]", help_text), help_text
    assert re.search(rf"(^|[\s,\[]){re.escape(new)}[\s,\]]", help_text), help_text
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(rest + [old, value, new, value])
    assert stop.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_old_spelling_values_are_checked_as_the_new_ones(capsys) -> None:
    """An alias keeps the type and the choices of its option."""
    for argv in (["split", "-d", "7", "--folds", "1"], ["register", "--fixed", "a", "--moving", "v", "-o", "o",
                                                         "--method", "bspline"]):
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args(argv)
        assert stop.value.code == 2
    assert "argument --method: invalid choice: 'bspline'" in capsys.readouterr().err


def test_convert_needs_a_dataset_in_either_spelling(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["convert", "in", "--name", "X"])
    assert stop.value.code == 2 and "-d/--dataset is required" in capsys.readouterr().err
    assert build_parser().parse_args(["convert", "in", "-d", "7", "--name", "X"]).dataset_id == 7


def test_new_spellings_mean_what_they_say() -> None:
    parser = build_parser()
    assert parser.parse_args(["predict", "-i", "in", "-m", "m", "-o", "o", "-f", "0", "2"]).folds == ["0", "2"]
    assert parser.parse_args(["split", "-d", "7"]).n_folds == 3
    assert parser.parse_args(["register", "--fixed", "a", "--moving", "v", "-o", "o"]).registration_method == "demons"
    assert parser.parse_args(["convert", "in", "-d", "7", "--name", "X"]).registration_method == "demons"


def test_version_is_the_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"nnunet-hpn {nnunet_hpn.__version__}"
    # the installed distribution's version is read from the same module (pyproject's dynamic version)
    from importlib.metadata import version

    assert version("nnunet-hpn") == nnunet_hpn.__version__


def _expanded_help(action: argparse.Action, prog: str) -> str:
    """The help text of ``action`` as ``--help`` prints it, on one line."""
    text = action.help % {**vars(action), "prog": prog}
    return " ".join(text.split())


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_states_every_default_and_describes_every_positional(command: str) -> None:
    subparser = _subparsers(build_parser())[command]
    missing: List[str] = []
    for action in subparser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.option_strings and not action.help:
            missing.append(f"{name}: no help text")
        elif action.nargs != 0 and shows_default(action.default):
            if not action.help or f"(default: {as_typed(action.default)})" not in _expanded_help(action,
                                                                                               subparser.prog):
                missing.append(f"{name}: default {action.default!r} not in its help")
    assert not missing, missing


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_printed_help_shows_the_defaults(command: str, capsys) -> None:
    """What a user sees: ``nnunet-hpn <command> --help`` exits 0 and states a default wherever one applies."""
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    for action in _subparsers(build_parser())[command]._actions:
        if action.option_strings and action.nargs != 0 and shows_default(action.default):
            assert f"(default: {as_typed(action.default)})" in printed, action.option_strings


def test_help_of_the_console_script() -> None:
    exe = Path(sys.executable).parent / "nnunet-hpn"
    proc = subprocess.run([str(exe), "split", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = " ".join(proc.stdout.split())
    assert "--n-folds N_FOLDS number of folds (default: 3)" in printed and "--folds" not in printed


def test_phase_options_follow_the_default_phases() -> None:
    """predict's one-case phase options and every --phases default are the package's phase names."""
    subparsers = _subparsers(build_parser())
    predict = {option for action in subparsers["predict"]._actions for option in action.option_strings}
    assert {f"--{phase}" for phase in PHASES} <= predict
    for command in ("phantom", "convert", "phase-map"):
        assert subparsers[command].parse_args(["x"] + (["-d", "1", "--name", "X"] if command == "convert" else
                                                       ["-o", "x.csv"] if command == "phase-map" else [])
                                              ).phases == list(PHASES)
