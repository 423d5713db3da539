"""The start-up hook: stock nnU-Net lookups find HPN's classes in fresh interpreters, user settings survive, and an
environment without the package (simulated with ``python -S``) still runs nnU-Net."""
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import nnunet_hpn

LOOKUPS = textwrap.dedent("""
    import os, nnunetv2
    from os.path import join
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    planner = recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), "{planner}",
                                          current_module="nnunetv2.experiment_planning")
    norm = recursive_find_python_class(join(nnunetv2.__path__[0], "preprocessing", "normalization"),
                                       "HPNCTNormalization", current_module="nnunetv2.preprocessing.normalization")
    print("PLANNER", planner.__module__ if planner else None)
    print("NORM", norm.__module__ if norm else None)
    print("EXT", os.environ.get("nnUNet_extTrainer"))
    for name in {trainers!r}:
        cls = recursive_find_trainer_class_by_name(name)
        import pickle; pickle.dumps(cls)   # the shim folder keeps classes importable and picklable
        print("TRAINER", name, cls.__module__)
""")


def _run_python(code: str, env: dict, *flags: str, cwd: Path = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def _clean_env() -> dict:
    env = dict(os.environ)
    env.pop("nnUNet_extTrainer", None)
    env.pop("NNUNET_HPN_DISABLE_HOOK", None)
    return env


def test_fresh_interpreter_finds_planners_normalization_and_trainers():
    code = LOOKUPS.format(planner="HPNResDSNPlanner", trainers=["HPNTrainer", "HPNTrainer_cpu_smoke"])
    proc = _run_python(code, _clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "PLANNER nnunet_hpn.nnunet.planners.hpn_planner" in proc.stdout
    assert "NORM nnunet_hpn.nnunet.normalization" in proc.stdout
    assert "TRAINER HPNTrainer nnunet_hpn.nnunet.trainers.hpn_trainer" in proc.stdout
    assert "TRAINER HPNTrainer_cpu_smoke nnunet_hpn.nnunet.trainers.hpn_trainer" in proc.stdout
    assert f"EXT {nnunet_hpn.EXT_TRAINER_DIR}" in proc.stdout


def test_user_ext_trainer_entries_are_kept(tmp_path: Path):
    user_dir = tmp_path / "my_trainers"
    user_dir.mkdir()
    (user_dir / "my_trainer.py").write_text(
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        "class MyOwnTrainer(nnUNetTrainer):\n    pass\n")
    env = _clean_env()
    env["nnUNet_extTrainer"] = str(user_dir)
    code = textwrap.dedent("""
        import os
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        print("EXT", os.environ["nnUNet_extTrainer"])
        print("MINE", recursive_find_trainer_class_by_name("MyOwnTrainer").__name__)
        print("HPN", recursive_find_trainer_class_by_name("HPNTrainer").__name__)
    """)
    proc = _run_python(code, env)
    assert proc.returncode == 0, proc.stderr
    assert f"EXT {user_dir}{os.pathsep}{nnunet_hpn.EXT_TRAINER_DIR}\n" in proc.stdout
    assert "MINE MyOwnTrainer" in proc.stdout and "HPN HPNTrainer" in proc.stdout


def test_hook_can_be_disabled():
    env = _clean_env()
    env["NNUNET_HPN_DISABLE_HOOK"] = "1"
    proc = _run_python(LOOKUPS.format(planner="HPNPlanner", trainers=[]), env)
    assert proc.returncode == 0, proc.stderr
    assert "PLANNER None" in proc.stdout and "NORM None" in proc.stdout and "EXT None" in proc.stdout


def test_without_the_package_nnunet_still_works(tmp_path: Path):
    """``python -S`` skips every .pth file, i.e. neither our hook nor our (editable) package is seen: the state
    after ``pip uninstall nnunet-hpn``. nnU-Net's own lookups must work and ours must simply be absent."""
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    code = textwrap.dedent("""
        import importlib.util, os, nnunetv2
        from os.path import join
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        print("HPN_IMPORTABLE", importlib.util.find_spec("nnunet_hpn") is not None)
        print("EXT", os.environ.get("nnUNet_extTrainer"))
        print("STOCK_PLANNER", recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"),
              "ExperimentPlanner", current_module="nnunetv2.experiment_planning").__name__)
        print("HPN_PLANNER", recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"),
              "HPNPlanner", current_module="nnunetv2.experiment_planning"))
        print("STOCK_TRAINER", recursive_find_trainer_class_by_name("nnUNetTrainer").__name__)
    """)
    proc = _run_python(code, env, "-S", cwd=tmp_path)  # not the checkout: its folder would be importable
    assert proc.returncode == 0, proc.stderr
    assert "HPN_IMPORTABLE False" in proc.stdout and "EXT None" in proc.stdout
    assert "STOCK_PLANNER ExperimentPlanner" in proc.stdout and "HPN_PLANNER None" in proc.stdout
    assert "STOCK_TRAINER nnUNetTrainer" in proc.stdout


def test_installed_nnunet_is_inside_the_declared_range():
    """pip must not replace a user's nnU-Net 2.8.x: the package declares a range (2.8 brings ``nnUNet_extTrainer``),
    the installed nnU-Net lies inside it, and the installed metadata is the checkout's (else: ``make env``)."""
    import tomllib
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = next(Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("nnunetv2"))
    assert str(declared.specifier) in ("<2.9,>=2.8.1", ">=2.8.1,<2.9")
    installed = next(Requirement(r) for r in requires("nnunet-hpn") if r.startswith("nnunetv2"))
    assert installed.specifier == declared.specifier, "installed metadata is stale: run 'make env'"
    assert declared.specifier.contains(version("nnunetv2"))
    assert not declared.specifier.contains("2.7.0") and declared.specifier.contains("2.8.9")
