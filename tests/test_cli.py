"""The ``nnunet-hpn`` command: subcommands wire through, bad input is one line on stderr and a non-zero exit."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.cli import main


def test_phantom_then_convert_via_the_console_script(tmp_path: Path):
    exe = Path(sys.executable).parent / "nnunet-hpn"
    proc = subprocess.run([str(exe), "phantom", str(tmp_path / "cases"), "--cases", "2", "--seed", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(exe), "convert", str(tmp_path / "cases"), "--dataset-id", "777", "--name", "Cli",
                           "--raw-root", str(tmp_path / "raw")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    dataset = json.loads((tmp_path / "raw" / "Dataset777_Cli" / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "arterial", "1": "venous"} and dataset["numTraining"] == 2


def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, capsys):
    case = tmp_path / "cases" / "c1"
    case.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16))
    sitk.WriteImage(image, str(case / "arterial.nii.gz"))  # venous missing
    status = main(["convert", str(tmp_path / "cases"), "--dataset-id", "778", "--name", "Bad",
                   "--raw-root", str(tmp_path / "raw")])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert len(err.splitlines()) == 1 and "venous.nii.gz" in err and err.startswith("nnunet-hpn convert: error:")
    assert not any((tmp_path / "raw").glob("Dataset778_*"))


def test_union_subcommand(tmp_path: Path, capsys):
    folders = []
    for name, value in (("orig", 1), ("virtual", 2)):
        folder = tmp_path / name
        folder.mkdir()
        array = np.zeros((4, 8, 8), np.uint8)
        array[1, 1:3, 1:3] = value
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / "case.nii.gz"))
        folders.append(str(folder))
    assert main(["union", "-i", *folders, "-o", str(tmp_path / "union")]) == 0
    union = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "union" / "case.nii.gz")))
    assert union[1, 1, 1] == 2 and union.sum() == 2 * 4


@pytest.mark.parametrize("command", ["evaluate", "report"])
@pytest.mark.parametrize("tolerance", ["-1", "nan", "inf", "two"])
def test_tolerance_must_be_a_finite_non_negative_number(tmp_path, capsys, command: str, tolerance: str) -> None:
    args = [command, str(tmp_path / "gt"), str(tmp_path / "pred")] if command == "evaluate" else \
        [command, f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--gt", str(tmp_path / "gt"), "-o", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as error:
        main([*args, "--tolerance-mm", tolerance])
    assert error.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "argument --tolerance-mm" in lines[-1] and not (tmp_path / "r").exists()


def _tiny_image(path: Path, value: int = 0) -> Path:
    array = np.full((6, 8, 8), value, dtype=np.int16)
    array[2:4, 2:6, 2:6] = 100
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize("flag", ["-o", "--qc"])
def test_predict_refuses_to_write_onto_an_input_before_loading_anything(tmp_path, capsys, flag: str) -> None:
    arterial, venous = _tiny_image(tmp_path / "arterial.nii.gz"), _tiny_image(tmp_path / "venous.nii.gz", 5)
    before = venous.read_bytes()
    outputs = {"-o": ["-o", str(venous)], "--qc": ["-o", str(tmp_path / "out.nii.gz"), "--qc", str(venous)]}[flag]
    assert main(["predict", "--arterial", str(arterial), "--venous", str(venous), "-m", str(tmp_path / "no_model"),
                 *outputs]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{flag} would overwrite the input" in lines[0] and str(venous) in lines[0]
    assert venous.read_bytes() == before and not (tmp_path / "out.nii.gz").exists()


def test_evaluate_refuses_an_output_onto_a_truth_label(tmp_path, capsys) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    _tiny_image(tmp_path / "pred" / "case.nii.gz")
    truth = _tiny_image(tmp_path / "gt" / "case.nii.gz")
    before = truth.read_bytes()
    assert main(["evaluate", str(tmp_path / "gt"), str(tmp_path / "pred"), "-o", str(truth)]) == 1
    assert "-o would overwrite the input" in capsys.readouterr().err
    assert truth.read_bytes() == before


def test_nnunet_flag_spellings_are_accepted():
    """The flags nnU-Net users type (``-d -c -device -chk --disable_tta -step_size``) mean the same as ours."""
    from nnunet_hpn.cli import build_parser

    parser = build_parser()
    predict = parser.parse_args(["predict", "-i", "in", "-m", "model", "-o", "out", "-device", "cpu", "-chk",
                                 "checkpoint_best.pth", "--disable_tta", "-step_size", "0.7", "-f", "0", "1"])
    assert (predict.device, predict.checkpoint, predict.disable_tta, predict.step_size, predict.folds) == (
        "cpu", "checkpoint_best.pth", True, 0.7, ["0", "1"])
    assert parser.parse_args(["predict", "-i", "in", "-m", "m", "-o", "o", "--disable-tta"]).disable_tta
    assert parser.parse_args(["convert", "in", "-d", "7", "--name", "X"]).dataset_id == 7
    assert parser.parse_args(["cpu-config", "-d", "7", "-c", "3d_small"]).name == "3d_small"
    evaluate = parser.parse_args(["evaluate", "gt", "pred", "-np", "3"])
    assert (evaluate.gt_dir, evaluate.pred_dir, evaluate.np) == ("gt", "pred", 3)
    assert parser.parse_args(["report", "a=x", "--gt", "gt", "-o", "r", "-np", "2"]).np == 2
