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


def test_killed_predict_folder_leaves_nothing_that_looks_complete(planned_dataset, predict_model: Path,
                                                                  tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    for image in sorted((planned_dataset["raw"] / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        (cases / case).mkdir(parents=True)
        for channel, phase in enumerate(("arterial", "venous")):
            (cases / case / f"{phase}.nii.gz").symlink_to(image.with_name(f"{case}_{channel:04d}.nii.gz"))
    out = tmp_path / "predictions"
    argv = ["predict", "-i", str(cases), "-m", str(predict_model), "-o", str(out), "--disable-tta",
            "--registration", "affine"]
    expected = sorted(f"{case.name}.nii.gz" for case in cases.iterdir())
    started = time.monotonic()
    for seconds in KILL_AFTER_S:
        status = _killed(argv, seconds)
        if status == 0:
            assert sorted(path.name for path in out.glob("*.nii.gz")) == expected
            break
        assert status == -signal.SIGKILL
        # nothing, or (killed while exiting, after the predictions moved into place) every case: never a part
        written = sorted(path.name for path in out.glob("*.nii.gz")) if out.exists() else []
        assert written in ([], expected), f"killed after {seconds} s: {written}"
    assert time.monotonic() - started < 300
    assert subprocess.run([str(BIN / "nnunet-hpn"), *argv], capture_output=True).returncode == 0
    assert sorted(path.name for path in out.glob("*.nii.gz")) == expected
    assert _hidden(tmp_path) == [] and _hidden(out) == [], "stale staging folders left by the killed runs"
