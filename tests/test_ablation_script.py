"""scripts/run_ablation.py: row resolution and arguments without training; one small end-to-end run (2 trainings
of 1 epoch × 2 iterations on fold 0, fusion derived with nnUNetv2_ensemble) and a re-run that only re-collects."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import cpu_table1
import run_ablation as ablation
from conftest import DATASET_ID, TINY_CONFIGURATION, nnunet_env
from hpn_experiments import table1 as protocol

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_ablation.py"


# ----------------------------------------------------------------------------------------------- without training

def test_derived_rows_pull_in_what_they_need_in_paper_order():
    assert ablation.resolve_rows(["fusion"]) == ["arterial", "venous", "fusion"]
    assert ablation.resolve_rows(["hpn_union", "arterial"]) == ["arterial", "hpn", "hpn_virtual", "hpn_union"]
    assert ablation.resolve_rows(list(reversed(ablation.ROWS))) == list(ablation.ROWS)
    assert ablation.trained_rows(ablation.resolve_rows(["fusion", "hpn_union"])) == [
        "arterial", "venous", "hpn", "hpn_virtual"]
    with pytest.raises(ablation.AblationError, match="unknown row"):
        ablation.resolve_rows(["nope"])


def test_every_trained_row_names_an_hpn_trainer():
    import nnunet_hpn.nnunet.trainers as trainers
    from nnunet_hpn.nnunet.trainers import hpn_trainer

    for row in ablation.ROWS.values():
        assert (row.trainer is None) == bool(row.needs)
        if row.trainer:
            assert issubclass(getattr(trainers, row.trainer), hpn_trainer.HPNTrainer)


def test_argument_defaults_and_errors(capsys):
    args = ablation.parse_args(["-d", "990"])
    assert args.rows == list(ablation.PAPER_ROWS) and args.backbones == ["unet", "resdsn"]
    assert args.folds == [0, 1, 2] and args.n_splits == 3 and args.configuration == "3d_fullres"
    assert args.epochs is None and args.device is None and args.seed == 12345
    args = ablation.parse_args(["-d", "990", "--folds", "4", "0", "--epochs", "3", "--cpu-config", "16", "32", "32"])
    assert args.folds == [0, 4] and args.n_splits == 5 and args.epochs == 3 and args.cpu_config == [16, 32, 32]
    for bad in (["--rows", "nope"], ["--backbones", "vnet"], ["--folds", "2", "--n-splits", "2"], ["--epochs", "0"],
                ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            ablation.parse_args(["-d", "990", *bad])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--help"])
    help_text = capsys.readouterr().out
    for row in ablation.ROWS.values():
        assert row.name in help_text and (row.trainer or "derived") in help_text
    assert "nnUNetHPNResDSNPlans" in help_text


def test_budget_goes_to_the_environment_only_when_given():
    args = ablation.parse_args(["-d", "990", "--epochs", "2", "--val-iterations", "1", "--device", "cpu"])
    env = ablation.build_env(args, base={"PATH": "/bin"})
    assert env["HPN_NUM_EPOCHS"] == "2" and env["HPN_VAL_ITERATIONS_PER_EPOCH"] == "1"
    assert "HPN_ITERATIONS_PER_EPOCH" not in env
    assert env["nnUNet_compile"] == "f" and env["nnUNet_def_n_proc"] == "2"
    assert "HPN_NO_TTA" not in env
    assert ablation.effective_budget(env) == {"epochs": 2, "iterations": 250, "val_iterations": 1, "save_every": 50,
                                              "source": "HPN_* environment", "test_time_mirroring": True,
                                              "training_seed": None}
    assert ablation.effective_budget({})["source"] == "trainer default"
    no_tta = ablation.build_env(ablation.parse_args(["-d", "990", "--no-tta", "--device", "cpu"]), base={})
    assert no_tta["HPN_NO_TTA"] == "1" and ablation.effective_budget(no_tta)["test_time_mirroring"] is False


def test_fold_state_chooses_new_resume_validate_or_skip(tmp_path):
    fold = tmp_path / "fold_0"
    assert ablation.fold_state(fold) == "new"
    fold.mkdir()
    (fold / "checkpoint_latest.pth").touch()
    assert ablation.fold_state(fold) == "resume"
    (fold / "checkpoint_final.pth").touch()
    assert ablation.fold_state(fold) == "validate"
    (fold / "validation").mkdir()
    (fold / "validation" / "case.npz").touch()
    assert ablation.fold_state(fold) == "done"

    base = ["nnUNetv2_train", "990", "3d_tiny", "1", "-tr", "HPNTrainer", "-p", "nnUNetHPNPlans", "--npz",
            "-device", "cpu"]
    command = ablation.train_command("990", "3d_tiny", 1, "HPNTrainer", "nnUNetHPNPlans", "cpu", "new")
    assert command == base
    assert ablation.train_command("990", "3d_tiny", 1, "HPNTrainer", "nnUNetHPNPlans", "cpu",
                                  "resume") == base + ["--c"]
    assert ablation.train_command("990", "3d_tiny", 1, "HPNTrainer", "nnUNetHPNPlans", "cpu",
                                  "validate") == base + ["--val"]


def test_missing_dataset_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / key).mkdir()
        monkeypatch.setenv(key, str(tmp_path / key))
    assert ablation.main(["-d", "123", "--device", "cpu"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("run_ablation: error: dataset 123:") and "\n" not in error


def test_split_is_written_once_stratified_and_checked_for_enough_folds(planned_dataset, tmp_path):
    name = planned_dataset["raw"].name
    dataset = ablation.Dataset(name, planned_dataset["raw"], tmp_path / name, tmp_path / "results" / name)
    progress = ablation.Progress()
    assert ablation.ensure_splits(dataset, [0], 3, 12345, progress) == 3
    splits = json.loads((tmp_path / name / "splits_final.json").read_text())
    assert len(splits) == 3 and sorted(sum((split["val"] for split in splits), [])) == sorted(
        path.name[:-7] for path in dataset.labels.glob("*.nii.gz"))
    assert ablation.ensure_splits(dataset, [0, 1, 2], 5, 1, progress) == 3  # present: kept as is
    assert json.loads((tmp_path / name / "splits_final.json").read_text()) == splits
    with pytest.raises(ablation.AblationError, match="has 3 folds, fold 3 requested"):
        ablation.ensure_splits(dataset, [3], 4, 12345, progress)


def test_table_lists_rows_in_paper_order_with_budget_line():
    from nnunet_hpn.evaluate.metrics import EvaluationResult

    dice = {"a": {"abnormal pancreas": 0.4, "PDAC": 0.0, "duct": 0.0},
            "b": {"abnormal pancreas": 0.6, "PDAC": 0.5, "duct": 0.0}}
    result = EvaluationResult({case: {target: {"Dice": value} for target, value in values.items()}
                               for case, values in dice.items()},
                              {case: {target: True for target in values} for case, values in dice.items()},
                              {"abnormal pancreas": 0, "PDAC": 1, "duct": 2}, ("Dice",))
    rows = ablation.resolve_rows(["hpn_union", "fusion"])
    records = ablation.table_records({("unet", row): result for row in rows}, ["unet"], rows)
    table = ablation.format_markdown(records, "Budget: test")
    positions = [table.index(f"| {ablation.ROWS[row].label} |") for row in rows]
    assert positions == sorted(positions) and "Budget: test" in table
    assert "| 50.00 ± 10.00 | 25.00 ± 25.00 | 0.00 ± 0.00 | 0/2 | 1/2 | 2/2 |" in table
    assert ablation.format_csv(records, "Budget: test").splitlines()[0] == "# Budget: test"


def test_table_columns_are_the_targets_of_the_evaluated_scheme():
    """A dataset with another label scheme (liver) gets its own target columns, not the paper's."""
    from nnunet_hpn.evaluate.metrics import EvaluationResult

    dice = {"a": {"liver": 0.9, "lesion": 0.5}, "b": {"liver": 0.7, "lesion": 0.0}}
    result = EvaluationResult({case: {target: {"Dice": value} for target, value in values.items()}
                               for case, values in dice.items()},
                              {case: {target: True for target in values} for case, values in dice.items()},
                              {"liver": 0, "lesion": 1}, ("Dice",))
    rows = ablation.resolve_rows(["early_fusion"])
    table = ablation.format_markdown(ablation.table_records({("unet", "early_fusion"): result}, ["unet"], rows), "B")
    assert "| liver DSC % (mean ± std) | lesion DSC % (mean ± std) | liver missed | lesion missed |" in table
    assert "| 80.00 ± 10.00 | 25.00 ± 25.00 | 0/2 | 1/2 |" in table
    assert "PDAC" not in table and "1∪2∪3" not in table


# ---------------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def own_nnunet_root(planned_dataset, tmp_path_factory) -> dict:
    """A copy of the planned phantom dataset under its own nnU-Net folders (own split file, no results), so that
    this module's split and trainings do not change what other tests see."""
    root = tmp_path_factory.mktemp("ablation")
    env = nnunet_env(root)
    name = planned_dataset["raw"].name
    shutil.copytree(planned_dataset["raw"], Path(env["nnUNet_raw"]) / name)
    shutil.copytree(Path(planned_dataset["env"]["nnUNet_preprocessed"]) / name,
                    Path(env["nnUNet_preprocessed"]) / name, ignore=shutil.ignore_patterns("splits_final.json"))
    Path(env["nnUNet_results"]).mkdir()
    # an existing 3-fold split with a single validation case in fold 0: half the final-validation time of an even
    # split (the script's own split writing is tested above)
    cases = sorted(path.name[:-7] for path in (planned_dataset["raw"] / "labelsTr").glob("*.nii.gz"))
    folds = [cases[:1], cases[1:3], cases[3:]]
    splits = [{"train": [case for case in cases if case not in fold], "val": fold} for fold in folds]
    (Path(env["nnUNet_preprocessed"]) / name / "splits_final.json").write_text(json.dumps(splits, indent=4))
    return {"root": root, "env": env, "name": name}


ARGS = ["-d", str(DATASET_ID), "--rows", "fusion", "--backbones", "unet", "--folds", "0", "-c", TINY_CONFIGURATION,
        "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--device", "cpu"]


def test_small_ablation_end_to_end_then_rerun_skips_training(own_nnunet_root, monkeypatch, capfd):
    env, name = own_nnunet_root["env"], own_nnunet_root["name"]
    out = own_nnunet_root["root"] / "ablation_out"
    proc = subprocess.run([sys.executable, str(SCRIPT), *ARGS, "-o", str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"

    splits = json.loads((Path(env["nnUNet_preprocessed"]) / name / "splits_final.json").read_text())
    assert len(splits) == 3 and len(splits[0]["val"]) == 1  # the existing split is used; only fold 0 trained
    val_cases = sorted(splits[0]["val"])
    results = Path(env["nnUNet_results"]) / name
    logs_before = sorted(results.glob("*/fold_*/training_log_*.txt"))
    for trainer in ("SinglePhaseTrainer_arterial", "SinglePhaseTrainer_venous"):
        fold = results / f"{trainer}__nnUNetHPNPlans__{TINY_CONFIGURATION}" / "fold_0"
        assert (fold / "checkpoint_final.pth").is_file()
    assert len(logs_before) == 2

    for row in ("arterial", "venous", "fusion"):
        folder = out / "unet" / row
        assert sorted(p.name[:-7] for p in folder.glob("*.nii.gz")) == val_cases
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["n_cases"] == len(val_cases) and (folder / "summary.csv").is_file()
    assert (out / "unet" / "arterial" / "plans.json").is_file()
    for case in val_cases:  # fusion = argmax of the mean of the single-phase probabilities
        arterial = np.load(out / "unet" / "arterial" / f"{case}.npz")["probabilities"].astype(np.float32)
        venous = np.load(out / "unet" / "venous" / f"{case}.npz")["probabilities"].astype(np.float32)
        fusion = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "unet" / "fusion" / f"{case}.nii.gz")))
        np.testing.assert_array_equal(fusion, np.argmax((arterial + venous) / 2, axis=0))

    table = (out / "table1.md").read_text()
    for label in ("single-phase (arterial)", "single-phase (venous)", "late fusion"):
        assert f"| 3D U-Net | {label}" in table
    assert "Budget: 1 epochs × 2 iterations" in table and f"configuration {TINY_CONFIGURATION}" in table
    assert "folds 0 (of 3 in splits_final.json)" in table and "device cpu" in table
    assert len((out / "table1.csv").read_text().splitlines()) == 2 + 3  # budget comment, header, 3 rows
    info = json.loads((out / "run_info.json").read_text())
    assert sorted(info["trainings"]) == ["unet/arterial/fold_0", "unet/venous/fold_0"]
    assert {"plans", "splits", "train", "collect", "evaluate"} <= set(info["step_seconds"])

    # re-run in-process: nothing is trained again, collection and evaluation are redone
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc", "nnUNet_compile"):
        monkeypatch.setenv(key, env[key])
    capfd.readouterr()
    assert ablation.main([*ARGS, "-o", str(out)]) == 0
    output = capfd.readouterr().out
    assert output.count(": skip (") == 2 and "$ nnUNetv2_train" not in output
    assert sorted(results.glob("*/fold_*/training_log_*.txt")) == logs_before
    info = json.loads((out / "run_info.json").read_text())
    assert info["trainings_this_run"] == [] and len(info["trainings"]) == 2  # earlier training times kept
    assert "training time recorded over all runs" in (out / "table1.md").read_text()


# ------------------------------------------------------------------------------------ the CPU Table-1 protocol

def test_cpu_table1_preset_is_a_valid_ablation_command_with_the_issue_budget():
    for row in protocol.ORDER:
        args = ablation.parse_args(["-d", str(protocol.DATASET_ID), *protocol.PRESET, "--rows", row])
        assert ablation.resolve_rows(args.rows)[-1] == row
        assert args.epochs * args.iterations >= 2000 and args.folds == [0, 1, 2] and args.backbones == ["unet"]
        assert args.training_seed is not None and args.no_tta
    # every paper row, in the paper's order, then the project's warm-up row
    assert [row for row in protocol.ORDER if row in ablation.PAPER_ROWS] == list(ablation.PAPER_ROWS)
    assert protocol.N_CASES >= 24


def test_ablation_budget_sets_checkpoint_interval_and_training_seed():
    args = ablation.parse_args(["-d", "1", "--epochs", "3", "--save-every", "2", "--training-seed", "7"])
    env = ablation.build_env(args, base={})
    assert env["HPN_SAVE_EVERY"] == "2" and env["HPN_SEED"] == "7" and env["HPN_NUM_EPOCHS"] == "3"
    budget = ablation.effective_budget(env)
    assert budget["save_every"] == 2 and budget["training_seed"] == 7


def test_cpu_table1_breaks_pdac_dice_down_by_kind_of_mass(tmp_path):
    (tmp_path / "phantoms").mkdir()
    cases = [{"case_id": "c0", "mass_subtle_in_both": True, "mass_iso_attenuating": False},
             {"case_id": "c1", "mass_subtle_in_both": False, "mass_iso_attenuating": True},
             {"case_id": "c2", "mass_subtle_in_both": False, "mass_iso_attenuating": False},
             {"case_id": "c3", "mass_subtle_in_both": False, "mass_iso_attenuating": False}]
    (tmp_path / "phantoms" / "phantoms.json").write_text(json.dumps({"cases": cases}))
    docs = tmp_path / "docs"
    (docs / "report_interim").mkdir(parents=True)
    lines = ["case,method,target,Dice,HD95_mm,NSD,truth_present"]
    dice = {"arterial": [0.0, 0.5, 0.6, 0.8], "venous": [0.2, 0.0, 0.7, 0.9]}
    for method, values in dice.items():
        for case, value in zip(("c0", "c1", "c2", "c3"), values):
            lines += [f"{case},{method},PDAC,{value},1,1,1", f"{case},{method},duct,0.99,1,1,1"]
    (docs / "report_interim" / "per_case.csv").write_text("\n".join(lines) + "\n")
    cpu_table1.write_by_kind(tmp_path, ["arterial", "venous"], docs)
    table = (docs / "by_kind.md").read_text()
    assert "subtle in both phases (n=1)" in table and "conspicuous (n=2)" in table
    assert "| arterial | 0.0 ± 0.0 (missed 1) | 50.0 ± 0.0 (missed 0) | 70.0 ± 10.0 (missed 0) |" in table
    assert "| venous | 20.0 ± 0.0 (missed 0) | 0.0 ± 0.0 (missed 1) | 80.0 ± 10.0 (missed 0) |" in table
