"""A killed run (SIGKILL, nothing can clean up) of ``convert --register`` and of ``predict -i`` at several moments
leaves no output that looks complete, and the next run succeeds and leaves no hidden staging folder behind."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN

#: seconds after the start at which a run is killed (the runs take a few seconds; a run that finished first must
#: have left a complete output)
KILL_AFTER_S = (0.5, 1.5, 3.0, 5.0)


def _killed(argv: list[str], seconds: float) -> int:
    """Run ``nnunet-hpn argv`` in its own session and SIGKILL the whole group after ``seconds``; its exit status."""
    process = subprocess.Popen([str(BIN / "nnunet-hpn"), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env={**os.environ, "PYTHONUTF8": "1"})
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode


def _hidden(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory) -> Path:
    from nnunet_hpn.phantom import write_phantom_cases

    root = tmp_path_factory.mktemp("fault_cases")
    write_phantom_cases(root, 3, seed=5, shape_zyx=(24, 48, 48), progress=False)
    return root


def test_killed_convert_leaves_nothing_that_looks_complete(phantom_cases: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    argv = ["convert", str(phantom_cases), "--dataset-id", "31", "--name", "Faults", "--raw-root", str(raw),
            "--register", "--overwrite"]
    target = raw / "Dataset031_Faults"
    for seconds in KILL_AFTER_S:
        status = _killed(argv, seconds)
        if status == 0:  # finished before the kill: then complete
            assert json.loads((target / "dataset.json").read_text())["numTraining"] == 3
            break
        assert status == -signal.SIGKILL
        if target.exists():  # killed while exiting, after the dataset moved into place: then complete
            assert json.loads((target / "dataset.json").read_text())["numTraining"] == 3
    assert subprocess.run([str(BIN / "nnunet-hpn"), *argv], capture_output=True).returncode == 0
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 3
    assert len(list((target / "imagesTr").glob("*.nii.gz"))) == 6
    assert _hidden(raw) == [], "stale staging folders or locks left by the killed runs"


def _case_folders(planned_dataset: dict, cases: Path) -> Path:
    """``cases/<case>/{arterial,venous}.nii.gz``: links to the test cases of the planned dataset."""
    for image in sorted((planned_dataset["raw"] / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        (cases / case).mkdir(parents=True)
        for channel, phase in enumerate(("arterial", "venous")):
            (cases / case / f"{phase}.nii.gz").symlink_to(image.with_name(f"{case}_{channel:04d}.nii.gz"))
    return cases


def test_killed_predict_folder_leaves_nothing_that_looks_complete(planned_dataset, predict_model: Path,
                                                                  tmp_path: Path) -> None:
    cases = _case_folders(planned_dataset, tmp_path / "cases")
    out = tmp_path / "predictions"
    argv = ["predict", "-i", str(cases), "-m", str(predict_model), "-o", str(out), "--disable-tta",
            "--registration", "affine"]
    expected = sorted(f"{case.name}.nii.gz" for case in cases.iterdir())
    for seconds in KILL_AFTER_S:
        status = _killed(argv, seconds)
        if status == 0:
            assert sorted(path.name for path in out.glob("*.nii.gz")) == expected
            break
        assert status == -signal.SIGKILL
        # nothing, or (killed while exiting, after the predictions moved into place) every case: never a part
        written = sorted(path.name for path in out.glob("*.nii.gz")) if out.exists() else []
        assert written in ([], expected), f"killed after {seconds} s: {written}"
    assert subprocess.run([str(BIN / "nnunet-hpn"), *argv], capture_output=True).returncode == 0
    assert sorted(path.name for path in out.glob("*.nii.gz")) == expected
    assert _hidden(tmp_path) == [] and _hidden(out) == [], "stale staging folders left by the killed runs"


# ------------------------------------------------------------------------------------------------ workers end with
# their parent; outputs of a case appear together

def _session_processes(session: int) -> list[int]:
    """Process ids of the live (not zombie) processes of ``session`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(stat.parent.name))
    return found


def _kill_main_once_workers_run(argv: list[str], workers: int) -> list[int]:
    """Start ``nnunet-hpn argv`` in a session of its own, wait until ``workers`` more processes of the session run,
    SIGKILL the main process alone (nothing can clean up) and return the session's processes alive a few seconds
    later."""
    process = subprocess.Popen([str(BIN / "nnunet-hpn"), *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "PYTHONUTF8": "1"})
    try:
        deadline = time.monotonic() + 120
        while len(_session_processes(process.pid)) < 1 + workers and process.poll() is None:
            assert time.monotonic() < deadline, "the worker processes never started"
            time.sleep(0.2)
        assert process.poll() is None, "finished before its workers could be seen"
        time.sleep(1.0)  # the workers at work
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        for _ in range(50):  # a few seconds for the kernel's parent-death signal and the exits
            alive = _session_processes(process.pid)
            if not alive:
                break
            time.sleep(0.1)
        return alive
    finally:
        for pid in _session_processes(process.pid):  # never leave a survivor behind, whatever the test found
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes through Linux /proc")
def test_killed_convert_leaves_no_worker_alive(phantom_cases: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    argv = ["convert", str(phantom_cases), "--dataset-id", "32", "--name", "Orphans", "--raw-root", str(raw),
            "--register", "-np", "2"]
    assert _kill_main_once_workers_run(argv, workers=2) == []
    assert not (raw / "Dataset032_Orphans").exists(), "a dataset that looks complete"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes through Linux /proc")
def test_killed_predict_folder_leaves_no_worker_alive(planned_dataset, predict_model: Path, tmp_path: Path) -> None:
    cases = _case_folders(planned_dataset, tmp_path / "cases")
    out = tmp_path / "predictions"
    argv = ["predict", "-i", str(cases), "-m", str(predict_model), "-o", str(out), "--disable-tta",
            "--registration", "demons", "-npp", "2"]
    assert _kill_main_once_workers_run(argv, workers=2) == []
    assert not out.exists() or not list(out.glob("*.nii.gz")), "predictions that look complete"


def test_a_failed_dicom_seg_leaves_no_label_map(tmp_path: Path, monkeypatch) -> None:
    """The outputs of one case are published together: when the DICOM Segmentation cannot be written, the NIfTI
    label map (and the QC) are not left behind either."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_hpn.errors import HPNInputError
    from nnunet_hpn.pipeline import outputs, predict

    def refuse(*args, **kwargs):
        raise HPNInputError("series: cannot reference its instances")

    monkeypatch.setattr(outputs, "dicom_seg_for", refuse)
    writer = predict.HPNPredictor.__new__(predict.HPNPredictor)  # the writing part only: no model needed
    writer.output_format, writer.channel_names, writer.scheme = "dicom-seg", ["arterial", "venous"], None
    label = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.uint8))
    result = predict.CasePrediction(label=label, reference_phase="arterial", qc={})
    out = tmp_path / "out" / "case.nii.gz"
    with pytest.raises(HPNInputError):
        writer.write(result, {"arterial": tmp_path / "arterial_dicom"}, out, tmp_path / "out" / "qc.json")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------------------------------------ protected files

def _protected_tree(root: Path) -> dict[str, Path]:
    """A trained model folder (plans, checkpoint, a fold's summary.json) and a raw dataset (truth labels in
    labelsTr), the kinds of files no command may write; plus valid small inputs for every command."""
    import numpy as np
    import SimpleITK as sitk

    model = root / "results" / "Dataset007_Bad" / "HPNTrainer__nnUNetHPNPlans__3d_fullres"
    (model / "fold_0" / "validation").mkdir(parents=True)
    (model / "plans.json").write_text('{"plans_name": "nnUNetHPNPlans", "configurations": {}}')
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "arterial", "1": "venous"},
                                                    "labels": {"background": 0, "pancreas": 1}}))
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"trained weights")
    (model / "fold_0" / "validation" / "summary.json").write_text('{"foreground_mean": {"Dice": 0.8}}')
    raw = root / "raw" / "Dataset007_Bad"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    (raw / "dataset.json").write_text((model / "dataset.json").read_text())
    rng = np.random.default_rng(0)
    label = np.zeros((8, 16, 16), dtype=np.uint8)
    label[2:6, 4:12, 4:12] = 1
    sitk.WriteImage(sitk.GetImageFromArray(label), str(raw / "labelsTr" / "case.nii.gz"))
    for folder in ("predictions", "virtual"):
        (root / folder).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(label), str(root / folder / "case.nii.gz"))
    case = root / "cases" / "case"
    case.mkdir(parents=True)
    for seed, phase in enumerate(("arterial", "venous")):
        volume = rng.normal(40, 20, (8, 16, 16)) + 150 * label - 1000 * (rng.random((8, 16, 16)) < 0.05)
        sitk.WriteImage(sitk.GetImageFromArray(volume.astype(np.int16)), str(case / f"{phase}.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(label), str(case / "label.nii.gz"))
    (root / "crop_boxes.json").write_text("{}")
    return {"model plans": model / "plans.json", "checkpoint": model / "fold_0" / "checkpoint_final.pth",
            "truth label": raw / "labelsTr" / "case.nii.gz",
            "fold summary": model / "fold_0" / "validation" / "summary.json"}


def _commands(root: Path, target: Path) -> dict[str, list[str]]:
    """Every command with one output pointed at ``target`` (a file output at the file, a folder output at the
    folder holding it)."""
    model = root / "results" / "Dataset007_Bad" / "HPNTrainer__nnUNetHPNPlans__3d_fullres"
    case, truth, folder = root / "cases" / "case", target.parent, target.parent
    one_case = ["predict", "--arterial", str(case / "arterial.nii.gz"), "--venous", str(case / "venous.nii.gz"),
                "-m", str(model)]
    return {
        "predict -o": [*one_case, "-o", str(target)],
        "predict --qc": [*one_case, "-o", str(root / "out.nii.gz"), "--qc", str(target)],
        "predict -i -o": ["predict", "-i", str(root / "cases"), "-m", str(model), "-o", str(folder)],
        "evaluate -o": ["evaluate", str(root / "raw" / "Dataset007_Bad" / "labelsTr"), str(root / "predictions"),
                        "-o", str(target)],
        "report -o": ["report", f"a={root / 'predictions'}", f"b={root / 'virtual'}", "--gt",
                      str(root / "raw" / "Dataset007_Bad" / "labelsTr"), "-o", str(folder)],
        "register -o": ["register", "--fixed", str(case / "arterial.nii.gz"), "--moving",
                        str(case / "venous.nii.gz"), "--method", "none", "-o", str(folder)],
        "union -o": ["union", "-i", str(root / "predictions"), str(root / "virtual"), "-o", str(folder)],
        "uncrop -o": ["uncrop", str(root / "predictions"), "--boxes", str(root / "crop_boxes.json"), "--reference",
                      str(truth), "-o", str(folder)],
        "phantom OUT_DIR": ["phantom", str(folder), "--cases", "1"],
        "convert --raw-root": ["convert", str(root / "cases"), "-d", "8", "--name", "X", "--raw-root", str(folder)],
        "demo --workdir": ["demo", "--workdir", str(folder)],
    }


def _contents(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_no_output_of_any_command_touches_a_protected_file(tmp_path: Path, capsys) -> None:
    from nnunet_hpn.cli import main

    protected = _protected_tree(tmp_path)
    guarded = [tmp_path / "results", tmp_path / "raw"]
    before = {str(folder): _contents(folder) for folder in guarded}
    for kind, target in protected.items():
        for command, argv in _commands(tmp_path, target).items():
            assert main(argv) == 1, f"{command} at the {kind}: not refused"
            error = capsys.readouterr().err.strip().splitlines()
            assert error and error[-1].startswith(f"nnunet-hpn {argv[0]}: error: "), (command, kind, error)
            after = {str(folder): _contents(folder) for folder in guarded}
            assert after == before, f"{command} at the {kind} changed a protected file"
