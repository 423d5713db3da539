"""Every bad input of the reliability list, for every command that reads it: exit status 1, one line on stderr that
names the file and the problem, and the output location exactly as before (nothing half-written).

``SCENARIOS`` is the table; docs/BAD_INPUTS.md lists the same ids with their messages (checked below)."""
import gzip
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

import test_dicom_study as study_data  # the study writers (pydicom, highdicom) of the DICOM study tests
from nnunet_hpn.cli import main
from nnunet_hpn.io.images import ct_value_problem

DOC = Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUTS.md"
SHAPE_ZYX = (12, 24, 24)
SPACING_XYZ = (1.5, 1.5, 3.0)
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")


# ------------------------------------------------------------------------------------------------ writing inputs

def _image(array: np.ndarray, spacing=SPACING_XYZ, direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 20.0, 5.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def _ct(seed: int, shape=SHAPE_ZYX) -> np.ndarray:
    """A CT-like int16 volume: soft tissue with a bright organ, noise."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(40, 20, shape)
    volume[shape[0] // 4: 3 * shape[0] // 4, 6:18, 6:18] += 120
    return volume.astype(np.int16)


def _label(shape=SHAPE_ZYX) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[3:9, 8:16, 8:16] = 1
    label[5:7, 10:13, 10:13] = 2
    label[4:8, 14, 9:15] = 3
    return label


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _write_case(case_dir: Path, seed: int = 0, with_label: bool = True) -> Dict[str, Path]:
    files = {"arterial": _write(_image(_ct(seed)), case_dir / "arterial.nii.gz"),
             "venous": _write(_image(_ct(seed + 100)), case_dir / "venous.nii.gz")}
    if with_label:
        files["label"] = _write(_image(_label()), case_dir / "label.nii.gz")
    return files


def _with_nan(path: Path, value: float = np.nan) -> None:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    array[2, 3, 4] = value
    _write(_image(array), path)


def _constant(path: Path) -> None:
    _write(_image(np.full(SHAPE_ZYX, -1000, dtype=np.int16)), path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _four_d(path: Path) -> None:
    volume = sitk.ReadImage(str(path))
    _write(sitk.JoinSeries([volume, volume]), path)


def _label_values(path: Path, value: int = 7) -> None:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    array[0, 0, 0] = value
    _write(_image(array), path)


def _regrid(path: Path, spacing=SPACING_XYZ, direction=None, shape=None) -> None:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if shape is not None:
        array = np.resize(array, shape)
    _write(_image(array, spacing=spacing, direction=direction), path)


def _values(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    """Rewrite an image with ``change`` applied to its voxel values (same grid)."""
    def action(path: Path) -> None:
        _write(_image(change(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32))), path)
    return action


#: stored values without the rescale intercept, values scaled far outside any CT range, a label map as a phase
_hu_plus_1024 = _values(lambda hu: hu + 1024)
_scaled = _values(lambda hu: hu * 1000)
_as_label_map = _values(lambda hu: (hu > 100).astype(np.float32) + (hu > 160))


def _one_slice_case(files: Dict[str, Path]) -> Path:
    """Every image of the case (phases and labels) cut to its middle slice: one grid, one slice."""
    for path in files.values():
        image = sitk.ReadImage(str(path))
        _write(image[:, :, SHAPE_ZYX[0] // 2:SHAPE_ZYX[0] // 2 + 1], path)
    return files["arterial"]


def _uncompressed(files: Dict[str, Path], key: str, action: Optional[Callable[[Path], None]] = None) -> Path:
    """``files[key]`` rewritten as an uncompressed ``.nii`` (then damaged by ``action``), and named."""
    target = files[key].with_name(files[key].name.replace(".nii.gz", ".nii"))
    sitk.WriteImage(sitk.ReadImage(str(files[key])), str(target), useCompression=False)
    files[key].unlink()
    files[key] = target
    if action is not None:
        action(target)
    return target


def _nan_in_nii(path: Path) -> None:
    """One NaN written into the voxel data of an uncompressed float NIfTI, where SimpleITK reads it as 0."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    array[2, 3, 4] = np.nan
    image = _image(array)
    sitk.WriteImage(image, str(path), useCompression=False)


def _garbage_dicom_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index in range(3):
        (folder / f"IM{index:04d}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"not a data set" * 10)
    return folder


def _snapshot(path: Path) -> Optional[Dict[str, Tuple[int, bytes]]]:
    """Every file below ``path`` (or ``path`` itself) with its size and content: None when absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": (path.stat().st_size, path.read_bytes())}
    return {str(item.relative_to(path)): (item.stat().st_size, item.read_bytes() if item.is_file() else b"")
            for item in sorted(path.rglob("*"))}


# ------------------------------------------------------------------------------------------------ the table

@dataclass
class Scenario:
    """A bad input: ``build(tmp, model)`` writes it and returns (argv, output location, file named in the message);
    ``problem`` is a regex the message must contain."""

    command: str
    problem: str
    build: Callable[[Path, Optional[Path]], Tuple[List[str], Path, Path]]
    needs_model: bool = False


def _convert(corrupt: Callable[[Dict[str, Path]], Path], two_cases: bool = False):
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        cases = tmp / "cases"
        files = _write_case(cases / "case_a")
        if two_cases:
            _write_case(cases / "case_b", seed=1)
        named = corrupt(files)
        raw = tmp / "raw"
        raw.mkdir()
        (raw / "Dataset123_Other").mkdir()  # an unrelated dataset that must stay as it is
        (raw / "Dataset123_Other" / "dataset.json").write_text("{}")
        return ["convert", str(cases), "--dataset-id", "7", "--name", "Bad", "--raw-root", str(raw)], raw, named
    return build


def _convert_study(write: Callable[[Path, Path], Path]):
    """convert of ``cases/`` holding the DICOM study that ``write(cases, scratch)`` writes (it returns the path the
    message must name)."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        cases = tmp / "cases"
        named = write(cases, tmp / "scratch")
        raw = tmp / "raw"
        raw.mkdir()
        return ["convert", str(cases), "--dataset-id", "7", "--name", "Bad", "--raw-root", str(raw)], raw, named
    return build


def _study_two_reconstructions(cases: Path, scratch: Path) -> Path:
    """Two reconstructions of the arterial scan (5 mm and 1 mm) beside the venous one: no phase by guess."""
    case, uid = study_data._phantom(0), generate_uid()
    slices = study_data._series(case, "arterial", uid, "ART 5mm") + study_data._series(case, "arterial", uid, "ART 1mm")
    study_data._write_shuffled(slices + study_data._series(case, "venous", uid), cases / "c", random.Random(1))
    return cases / "c"


def _study_timing_contradicts(cases: Path, scratch: Path) -> Path:
    """AcquisitionTime puts the arterial scan first, ContentTime the venous one."""
    case, uid = study_data._phantom(0), generate_uid()
    study_data._write_shuffled(study_data._series(case, "arterial", uid, ContentTime=study_data._clock(400))
                               + study_data._series(case, "venous", uid), cases / "c", random.Random(2))
    return cases / "c"


def _study_segmentation_of_another_series(cases: Path, scratch: Path) -> Path:
    """The study's Segmentation references a series that is not in the study."""
    case, uid = study_data._phantom(0), generate_uid()
    foreign = study_data._segmentation(case, study_data._series(case, "arterial", generate_uid()), scratch)
    study_data._write_shuffled(study_data._series(case, "arterial", uid) + study_data._series(case, "venous", uid),
                               cases / "c", random.Random(3))
    foreign.save_as(cases / "c" / "seg.dcm", enforce_file_format=True)
    return cases / "c" / "seg.dcm"


def _study_segmentation_beside_of_no_study(cases: Path, scratch: Path) -> Path:
    """A Segmentation beside the study folders references none of their series."""
    case, uid = study_data._phantom(0), generate_uid()
    study_data._write_shuffled(study_data._series(case, "arterial", uid) + study_data._series(case, "venous", uid),
                               cases / "c", random.Random(4))
    foreign = study_data._segmentation(case, study_data._series(case, "arterial", generate_uid()), scratch)
    foreign.save_as(cases / "c_seg.dcm", enforce_file_format=True)
    return cases / "c_seg.dcm"


def _convert_while_claimed(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    """Another convert (this test's process) holds the claim on dataset id 7."""
    argv, raw, _ = _convert(lambda files: files["arterial"])(tmp, model)
    lock = raw / ".Dataset007.lock"
    lock.write_text(str(os.getpid()))
    return argv, raw, raw


def _existing_dataset(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, raw, _ = _convert(lambda files: files["arterial"])(tmp, model)
    assert main(argv) == 0
    return argv, raw, raw / "Dataset007_Bad"


def _register(corrupt: Callable[[Dict[str, Path]], Path], with_labels: bool = False):
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        files = _write_case(tmp / "case")
        moving_label = shutil.copyfile(files["label"], tmp / "case" / "label_venous.nii.gz")
        files["moving_label"] = Path(moving_label)
        named = corrupt(files)
        out = tmp / "registered"
        argv = ["register", "--fixed", str(files["arterial"]), "--moving", str(files["venous"]), "-o", str(out),
                "--method", "affine"]
        if with_labels:
            argv += ["--moving-label", str(files["moving_label"]), "--fixed-label", str(files["label"])]
        return argv, out, named
    return build


def _predict(corrupt: Callable[[Dict[str, Path]], Path]):
    """One case; ``corrupt`` may also replace or add phases in the dict (every one becomes ``--phase NAME=PATH``)."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        files = _write_case(tmp / "case", with_label=False)
        named = corrupt(files)
        out = tmp / "predictions" / "case.nii.gz"
        out.parent.mkdir()
        (out.parent / "earlier.nii.gz").write_bytes(b"an earlier result")
        phases = [argument for phase, path in files.items() for argument in ("--phase", f"{phase}={path}")]
        return ["predict", *phases, "-m", str(model), "-o", str(out), "--disable-tta", "--registration", "none"], \
            out.parent, named
    return build


def _register_into(prepare: Callable[[Dict[str, Path], Path], Path]):
    """register whose output location ``prepare(files, out)`` makes bad; returns the path it names."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        files = _write_case(tmp / "case")
        out = tmp / "registered"
        named = prepare(files, out)
        argv = ["register", "--fixed", str(files["arterial"]), "--moving", str(files["venous"]), "-o", str(out),
                "--method", "affine"]
        return argv, out, named
    return build


def _move_into(files: Dict[str, Path], key: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files[key] = Path(shutil.move(str(files[key]), str(folder / files[key].name)))
    return files[key]


def _predict_to(output: Callable[[Path], Path]):
    """One good case predicted to the output path ``output(default output)`` returns."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        argv, location, _ = _predict(lambda files: files["arterial"])(tmp, model)
        out = output(Path(argv[argv.index("-o") + 1]))
        argv[argv.index("-o") + 1] = str(out)
        return argv, location, out
    return build


def _evaluate_to_folder(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, location, _ = _evaluate(lambda pred, truth: pred)(tmp, model)
    argv[argv.index("-o") + 1] = str(location)
    return argv, location, location


def _predict_onto_input(option: str):
    """One case whose ``-o`` or ``--qc`` names its venous input."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        argv, _, _ = _predict(lambda files: files["arterial"])(tmp, model)
        venous = tmp / "case" / "venous.nii.gz"
        if option == "-o":
            argv[argv.index("-o") + 1] = str(venous)
        else:
            argv += [option, str(venous)]
        return argv, venous, venous
    return build


def _evaluate_onto_truth(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, _, _ = _evaluate(lambda pred, truth: pred)(tmp, model)
    label = tmp / "truth" / "case_a.nii.gz"
    argv[argv.index("-o") + 1] = str(label)
    return argv, label, label


def _fractional_label(path: Path) -> None:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    array[4, 10, 10] = 1.0000001
    _write(_image(array), path)


def _predict_with_model(change: Callable[[Path], Path]):
    """One good case predicted with a copy of the model folder that ``change`` damages (returns the path it names)."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        copy = Path(shutil.copytree(model, tmp / "model"))
        argv, location, _ = _predict(lambda files: files["arterial"])(tmp, model)
        argv[argv.index("-m") + 1] = str(copy)
        return argv, location, change(copy)
    return build


def _checkpoint(model: Path, content: Optional[bytes] = None, truncate: bool = False) -> Path:
    path = model / "fold_0" / "checkpoint_final.pth"
    if truncate:
        _truncate(path)
    elif content is not None:
        path.write_bytes(content)
    return path


def _foreign_checkpoint(model: Path) -> Path:
    import torch

    path = _checkpoint(model)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)  # a checkpoint of something else
    return path


def _third_channel(model: Path) -> Path:
    path = model / "dataset.json"
    dataset = json.loads(path.read_text())
    dataset["channel_names"]["2"] = "delayed"
    path.write_text(json.dumps(dataset))
    return path


def _predict_folder(corrupt: Callable[[Path], Path]):
    """Folder mode: case_a is good, case_b is bad; case_a's prediction must not appear either."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        cases = tmp / "cases"
        _write_case(cases / "case_a", with_label=False)
        _write_case(cases / "case_b", seed=1, with_label=False)
        named = corrupt(cases / "case_b")
        out = tmp / "predictions"
        out.mkdir()
        (out / "earlier.nii.gz").write_bytes(b"an earlier result")
        return ["predict", "-i", str(cases), "-m", str(model), "-o", str(out), "--disable-tta",
                "--registration", "none"], out, named
    return build


def _label_folders(tmp: Path, names: Tuple[str, str] = ("original", "virtual")) -> Tuple[Path, Path]:
    first, second = tmp / names[0], tmp / names[1]
    for folder in (first, second):
        for case in ("case_a", "case_b"):
            _write(_image(_label()), folder / f"{case}.nii.gz")
    return first, second


def _union(corrupt: Callable[[Path, Path], Path]):
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        first, second = _label_folders(tmp)
        named = corrupt(first, second)
        out = tmp / "union"
        out.mkdir()
        (out / "earlier.nii.gz").write_bytes(b"an earlier result")
        return ["union", "-i", str(first), str(second), "-o", str(out)], out, named
    return build


def _evaluate(corrupt: Callable[[Path, Path], Path]):
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        predictions, truth = _label_folders(tmp, ("predictions", "truth"))
        named = corrupt(predictions, truth)
        out = tmp / "evaluation"
        out.mkdir()
        (out / "summary.json").write_text('{"an": "earlier result"}')
        return ["evaluate", str(truth), str(predictions), "-o", str(out / "summary.json")], out, named
    return build


def _then(action: Callable[[Path], None], key: str) -> Callable[[Dict[str, Path]], Path]:
    """Corrupt ``files[key]`` with ``action`` and name it."""
    def corrupt(files: Dict[str, Path]) -> Path:
        action(files[key])
        return files[key]
    return corrupt


def _replace(files: Dict[str, Path], key: str, path: Path) -> Path:
    """Give ``files[key]`` another input (e.g. a DICOM folder) and name it."""
    files[key] = path
    return path


def _delete(path: Path) -> None:
    path.unlink()


def _extra_file(case_dir: Path) -> Path:
    (case_dir / "notes.txt").write_text("scanned twice")
    return case_dir / "notes.txt"


def _misnamed(case_dir: Path) -> Path:
    (case_dir / "venous.nii.gz").rename(case_dir / "venus.nii.gz")
    return case_dir / "venus.nii.gz"


SCENARIOS: Dict[str, Scenario] = {
    # ---- convert
    "convert/size": Scenario("convert", r"size differs from .*arterial\.nii\.gz",
                             _convert(_then(lambda p: _regrid(p, shape=(12, 24, 20)), "venous"))),
    "convert/spacing": Scenario("convert", r"spacing differs from .*arterial\.nii\.gz",
                                _convert(_then(lambda p: _regrid(p, spacing=(1.5, 1.5, 2.5)), "venous"))),
    "convert/direction": Scenario("convert", r"direction differs from .*arterial\.nii\.gz", _convert(
        _then(lambda p: _regrid(p, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)), "venous"))),
    "convert/missing-phase": Scenario("convert", r"file is missing", _convert(_then(_delete, "venous"))),
    "convert/label-values": Scenario("convert", r"label values \{7\} outside \[0, 1, 2, 3\]",
                                     _convert(_then(_label_values, "label"))),
    "convert/label-geometry": Scenario("convert", r"spacing differs from .*arterial\.nii\.gz", _convert(
        _then(lambda p: _regrid(p, spacing=(1.0, 1.0, 3.0)), "label"))),
    "convert/nan": Scenario("convert", r"1 NaN/Inf voxels", _convert(_then(_with_nan, "arterial"))),
    "convert/inf": Scenario("convert", r"1 NaN/Inf voxels",
                            _convert(_then(lambda p: _with_nan(p, np.inf), "venous"))),
    "convert/empty": Scenario("convert", r"image is empty \(every voxel is -1000\)",
                              _convert(_then(_constant, "arterial"))),
    "convert/truncated": Scenario("convert", r"corrupt", _convert(_then(_truncate, "venous"))),
    "convert/4d": Scenario("convert", r"4D image, expected a 3D image", _convert(_then(_four_d, "arterial"))),
    "convert/extra-file": Scenario("convert", r"unexpected file in a case folder",
                                   _convert(lambda files: _extra_file(files["arterial"].parent))),
    "convert/misnamed-file": Scenario("convert", r"unexpected file in a case folder",
                                      _convert(lambda files: _misnamed(files["arterial"].parent))),
    "convert/second-case-bad": Scenario("convert", r"label values \{7\} outside",
                                        _convert(lambda files: _then(_label_values, "label")(
                                            {"label": files["label"].parents[1] / "case_b" / "label.nii.gz"}),
                                            two_cases=True)),
    "convert/dataset-exists": Scenario("convert", r"dataset id 7 already exists \(--overwrite replaces it\)",
                                       _existing_dataset),
    # ---- register
    "register/missing-phase": Scenario("register", r"file or folder is missing", _register(_then(_delete, "venous"))),
    "register/label-values": Scenario("register", r"unexpected labels \[9\]", _register(
        _then(lambda p: _label_values(p, 9), "moving_label"), with_labels=True)),
    "register/label-geometry": Scenario("register", r"differs from .*venous\.nii\.gz", _register(
        _then(lambda p: _regrid(p, spacing=(1.0, 1.0, 3.0)), "moving_label"), with_labels=True)),
    "register/nan": Scenario("register", r"1 NaN/Inf voxels", _register(_then(_with_nan, "venous"))),
    "register/empty": Scenario("register", r"image is empty", _register(_then(_constant, "arterial"))),
    "register/truncated": Scenario("register", r"corrupt", _register(_then(_truncate, "venous"))),
    "register/4d": Scenario("register", r"4D image, expected a 3D image", _register(_then(_four_d, "venous"))),
    "register/dicom-unreadable": Scenario("register", r"folder holds no DICOM series", _register(
        lambda files: _replace(files, "venous", _garbage_dicom_folder(files["venous"].with_name("venous_dicom"))))),
    # ---- predict (one case; --registration none: phases on other grids are resampled, not refused)
    "predict/missing-phase-file": Scenario("predict", r"file or folder is missing",
                                           _predict(_then(_delete, "venous")), needs_model=True),
    "predict/wrong-channels": Scenario(
        "predict", r"phase 'delayed' is not a channel of the model, which takes 2 phases",
        _predict(lambda files: _replace(files, "delayed", files["venous"])), needs_model=True),
    "predict/nan": Scenario("predict", r"1 NaN/Inf voxels", _predict(_then(_with_nan, "venous")), needs_model=True),
    "predict/empty": Scenario("predict", r"image is empty", _predict(_then(_constant, "venous")), needs_model=True),
    "predict/truncated": Scenario("predict", r"corrupt", _predict(_then(_truncate, "arterial")), needs_model=True),
    "predict/4d": Scenario("predict", r"4D image, expected a 3D image", _predict(_then(_four_d, "arterial")),
                           needs_model=True),
    "predict/dicom-unreadable": Scenario("predict", r"folder holds no DICOM series", _predict(
        lambda files: _replace(files, "venous", _garbage_dicom_folder(files["venous"].with_name("venous_dicom")))),
        needs_model=True),
    "predict/folder-extra-file": Scenario("predict", r"unexpected file in a case folder",
                                          _predict_folder(_extra_file), needs_model=True),
    "predict/folder-misnamed-file": Scenario("predict", r"unexpected file in a case folder",
                                             _predict_folder(_misnamed), needs_model=True),
    "predict/folder-second-case-corrupt": Scenario("predict", r"corrupt", _predict_folder(
        lambda case: (_truncate(case / "venous.nii.gz"), case / "venous.nii.gz")[1]), needs_model=True),
    # ---- union
    "union/missing-case": Scenario("union", r"case 'case_b' is missing",
                                   _union(lambda a, b: (_delete(b / "case_b.nii.gz"), b / "case_b.nii.gz")[1])),
    "union/label-values": Scenario("union", r"unexpected labels \[7\]",
                                   _union(lambda a, b: (_label_values(b / "case_b.nii.gz"), b / "case_b.nii.gz")[1])),
    "union/geometry": Scenario("union", r"geometry differs from .*case_b\.nii\.gz", _union(
        lambda a, b: (_regrid(b / "case_b.nii.gz", spacing=(1.0, 1.0, 3.0)), b / "case_b.nii.gz")[1])),
    "union/nan": Scenario("union", r"1 NaN/Inf voxels",
                          _union(lambda a, b: (_with_nan(b / "case_b.nii.gz"), b / "case_b.nii.gz")[1])),
    "union/truncated": Scenario("union", r"corrupt",
                                _union(lambda a, b: (_truncate(b / "case_b.nii.gz"), b / "case_b.nii.gz")[1])),
    "union/4d": Scenario("union", r"4D image, expected a 3D image",
                         _union(lambda a, b: (_four_d(a / "case_b.nii.gz"), a / "case_b.nii.gz")[1])),
    # ---- evaluate
    "evaluate/missing-prediction": Scenario("evaluate", r"missing prediction for truth case", _evaluate(
        lambda pred, truth: (_delete(pred / "case_b.nii.gz"), pred / "case_b.nii.gz")[1])),
    "evaluate/label-values": Scenario("evaluate", r"unexpected labels \[7\]", _evaluate(
        lambda pred, truth: (_label_values(truth / "case_a.nii.gz"), truth / "case_a.nii.gz")[1])),
    "evaluate/geometry": Scenario("evaluate", r"geometry differs from .*case_b\.nii\.gz", _evaluate(
        lambda pred, truth: (_regrid(pred / "case_b.nii.gz", spacing=(1.0, 1.0, 3.0)), pred / "case_b.nii.gz")[1])),
    "evaluate/nan": Scenario("evaluate", r"1 NaN/Inf voxels", _evaluate(
        lambda pred, truth: (_with_nan(pred / "case_a.nii.gz"), pred / "case_a.nii.gz")[1])),
    "evaluate/truncated": Scenario("evaluate", r"corrupt", _evaluate(
        lambda pred, truth: (_truncate(truth / "case_b.nii.gz"), truth / "case_b.nii.gz")[1])),
    "evaluate/4d": Scenario("evaluate", r"4D image, expected a 3D image", _evaluate(
        lambda pred, truth: (_four_d(pred / "case_a.nii.gz"), pred / "case_a.nii.gz")[1])),
    "convert/dataset-id-being-written": Scenario("convert", r"dataset id 7: being written by process \d+",
                                                 _convert_while_claimed),
    # the model folder checked before the model loads
    "predict/checkpoint-truncated": Scenario("predict", r"checkpoint cannot be loaded .*truncated or damaged",
                                             _predict_with_model(lambda m: _checkpoint(m, truncate=True)),
                                             needs_model=True),
    "predict/checkpoint-empty": Scenario("predict", r"checkpoint cannot be loaded",
                                         _predict_with_model(lambda m: _checkpoint(m, content=b"")), needs_model=True),
    "predict/checkpoint-foreign": Scenario("predict", r"not an nnU-Net checkpoint",
                                           _predict_with_model(_foreign_checkpoint), needs_model=True),
    "predict/model-without-plans": Scenario("predict", r"plans\.json: missing",
                                            _predict_with_model(lambda m: (_delete(m / "plans.json"),
                                                                           m / "plans.json")[1]), needs_model=True),
    "predict/model-channel-count": Scenario("predict", r"3 channels \(arterial, venous, delayed\), but .* trained on 2",
                                            _predict_with_model(_third_channel), needs_model=True),
    # outputs checked before any work
    "predict/output-is-an-input": Scenario("predict", r"-o would overwrite the input .*venous\.nii\.gz",
                                           _predict_onto_input("-o"), needs_model=True),
    "predict/qc-is-an-input": Scenario("predict", r"--qc would overwrite the input .*venous\.nii\.gz",
                                       _predict_onto_input("--qc"), needs_model=True),
    "evaluate/output-is-a-truth-label": Scenario("evaluate", r"-o would overwrite the input .*case_a\.nii\.gz",
                                                 _evaluate_onto_truth),
    "convert/label-not-integer": Scenario("convert", r"non-integer values \(e\.g\. 1\.0000001",
                                          _convert(_then(_fractional_label, "label"))),
    "register/moving-inside-output": Scenario("register", r"is a folder holding the input .*venous\.nii\.gz",
                                              _register_into(lambda files, out: _move_into(files, "venous", out))),
    "register/output-is-a-file": Scenario("register", r"names an existing file, expected a folder",
                                          _register_into(lambda files, out: (out.write_text("mine"), out)[1])),
    "predict/output-parent-is-a-file": Scenario("predict", r"is a file, not a folder", _predict_to(
        lambda out: ((out.parent / "taken").write_text("a file"), out.parent / "taken" / "case.nii.gz")[1]),
        needs_model=True),
    "evaluate/output-is-a-folder": Scenario("evaluate", r"names a folder, expected a file path", _evaluate_to_folder),
    # the input gate: values that do not look like CT in HU, images that are not volumes, uncompressed NIfTI
    "convert/hu-plus-1024": Scenario("convert", r"without the rescale intercept \(HU \+ 1024\).*"
                                     r"--allow-unusual-intensities", _convert(_then(_hu_plus_1024, "venous"))),
    "convert/scaled-values": Scenario("convert", r"outside any CT range in HU",
                                      _convert(_then(_scaled, "arterial"))),
    "convert/label-as-phase": Scenario("convert", r"only 3 distinct values: looks like a label map",
                                       _convert(_then(_as_label_map, "venous"))),
    "convert/one-slice": Scenario("convert", r"a phase needs at least 4 voxels along every axis",
                                  _convert(_one_slice_case)),
    "register/hu-plus-1024": Scenario("register", r"without the rescale intercept",
                                      _register(_then(_hu_plus_1024, "arterial"))),
    "register/label-as-phase": Scenario("register", r"looks like a label map", _register(
        _then(_as_label_map, "venous"))),
    "register/one-slice": Scenario("register", r"at least 4 voxels along every axis", _register(
        lambda files: _one_slice_case({key: files[key] for key in ("arterial", "venous")}))),
    "register/too-small-for-the-pyramid": Scenario("register", r"the affine registration onto .*arterial\.nii\.gz "
                                                   r"failed \(VirtualSampledPointSet must have 1 or more points\); "
                                                   r"images of \[7, 6, 5\] voxels may be too small", _register(
        lambda files: [_regrid(files[key], shape=(5, 6, 7)) for key in ("arterial", "venous")] and files["venous"])),
    "register/nii-truncated": Scenario("register", r"bytes, its header needs .* \(truncated", _register(
        lambda files: _uncompressed(files, "venous", _truncate))),
    "register/nii-nan": Scenario("register", r"1 NaN/Inf voxels", _register(
        lambda files: _uncompressed(files, "arterial", _nan_in_nii))),
    "predict/hu-plus-1024": Scenario("predict", r"without the rescale intercept",
                                     _predict(_then(_hu_plus_1024, "arterial")), needs_model=True),
    "predict/scaled-values": Scenario("predict", r"outside any CT range in HU",
                                      _predict(_then(_scaled, "venous")), needs_model=True),
    "predict/label-as-phase": Scenario("predict", r"looks like a label map",
                                       _predict(_then(_as_label_map, "venous")), needs_model=True),
    "predict/nii-truncated": Scenario("predict", r"bytes, its header needs", _predict(
        lambda files: _uncompressed(files, "arterial", _truncate)), needs_model=True),
    "predict/nii-nan": Scenario("predict", r"1 NaN/Inf voxels", _predict(
        lambda files: _uncompressed(files, "venous", _nan_in_nii)), needs_model=True),
}


# ------------------------------------------------------------------------------------------------ round 3: damage,
# implausible input, one case layout, no traceback

def _ct_with_air(seed: int, shape=SHAPE_ZYX) -> np.ndarray:
    """:func:`_ct` inside a body; air (-1000 HU, noisy) outside it."""
    volume = _ct(seed, shape).astype(np.float32)
    rng = np.random.default_rng(seed + 7)
    volume[:, :3, :] = volume[:, -3:, :] = rng.normal(-1000, 10, (shape[0], 3, shape[2]))
    return volume.astype(np.int16)


def _with_air(files: Dict[str, Path], key: str) -> Path:
    _write(_image(_ct_with_air(3)), files[key])
    return files[key]


def _nifti_header_disagrees(path: Path) -> None:
    """The image rewritten by nibabel with an sform of 2.5 mm voxels and pixdim 1 mm (ITK believes the pixdim)."""
    import nibabel

    voxels = np.asanyarray(nibabel.load(path).dataobj).copy()  # a copy: the file is rewritten below
    image = nibabel.Nifti1Image(voxels, np.diag([2.5, 2.5, 2.5, 1.0]))
    image.header.set_zooms((1.0, 1.0, 1.0))
    image.header.set_sform(np.diag([2.5, 2.5, 2.5, 1.0]), code=1)
    image.header.set_qform(None, code=0)
    nibabel.save(image, path)


def _blank_tail(path: Path) -> None:
    """The last 40 % of the slices zero, as in a partial copy that a zero-filled download completed."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    array[int(0.6 * array.shape[0]):] = 0
    _write(_image(array), path)


def _copy_of(files: Dict[str, Path], source: str, target: str) -> Path:
    shutil.copyfile(files[source], files[target])
    return files[target]


def _second_file_for_venous(files: Dict[str, Path]) -> Path:
    second = files["venous"].with_name("venous.nii")
    sitk.WriteImage(sitk.ReadImage(str(files["venous"])), str(second), useCompression=False)
    return second


_intercept_twice = _values(lambda hu: hu - 1024)
_wrong_slope = _values(lambda hu: hu * 2)
_halved_slope = _values(lambda hu: np.round(hu / 2))
_padded_without_intercept = _values(lambda hu: np.where(np.arange(hu.size).reshape(hu.shape) % 10 == 0, -2000,
                                                        hu + 1024))


def _with_env_dataset(tmp: Path) -> Path:
    """``$nnUNet_preprocessed/Dataset007_Bad`` (the test sets the variables onto ``tmp``)."""
    folder = tmp / "preprocessed" / "Dataset007_Bad"
    folder.mkdir(parents=True, exist_ok=True)
    (tmp / "raw" / "Dataset007_Bad").mkdir(parents=True, exist_ok=True)
    (tmp / "results").mkdir(exist_ok=True)
    return folder


def _cpu_config(extra: List[str], prepare: Optional[Callable[[Path, Path], Path]] = None):
    """cpu-config on a copy of the model's plans (and a fingerprint of 24x48x48 images at its spacing)."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        folder = _with_env_dataset(tmp)
        plans_file = Path(shutil.copyfile(model / "plans.json", folder / "nnUNetHPNPlans.json"))
        spacing = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["spacing"]
        (folder / "dataset_fingerprint.json").write_text(json.dumps(
            {"shapes_after_crop": [[24, 48, 48]], "spacings": [spacing]}))
        named = prepare(tmp, plans_file) if prepare is not None else plans_file
        return ["cpu-config", "-d", "7", *extra], folder, named
    return build


def _trained_configuration(tmp: Path, plans_file: Path) -> Path:
    from nnunet_hpn.nnunet.plans_tools import add_small_configuration

    add_small_configuration(plans_file, "3d_cpu", patch_size=(16, 32, 32))
    fold = tmp / "results" / "Dataset007_Bad" / "HPNTrainer__nnUNetHPNPlans__3d_cpu" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"weights")
    return plans_file


def _evaluate_into_truth(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, _, _ = _evaluate(lambda pred, truth: pred)(tmp, model)
    summary = tmp / "truth" / "summary.json"
    argv[argv.index("-o") + 1] = str(summary)
    return argv, tmp / "truth", summary


def _evaluate_csv_onto_json(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, location, _ = _evaluate(lambda pred, truth: pred)(tmp, model)
    argv[argv.index("-o") + 1] = str(location / "summary.csv")
    return argv, location, location / "summary.csv"


def _evaluate_same_folder(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, location, _ = _evaluate(lambda pred, truth: pred)(tmp, model)
    argv[2] = argv[1]
    return argv, location, Path(argv[1])


def _predict_qc(where: Callable[[Path, Path], Path]):
    """One case with ``--qc where(model copy, -o)``."""
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        argv, location, named = _predict_with_model(lambda copy: copy)(tmp, model)
        qc = where(Path(argv[argv.index("-m") + 1]), Path(argv[argv.index("-o") + 1]))
        return [*argv, "--qc", str(qc)], location, qc
    return build


def _predict_twice_given(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, location, _ = _predict(lambda files: files["arterial"])(tmp, model)
    venous = tmp / "case" / "venous.nii.gz"
    return [*argv, "--arterial", str(venous)], location, venous


def _predict_options(extra: List[str], folder: bool = False):
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        make = _predict_folder(lambda case: case) if folder else _predict(lambda files: files["arterial"])
        argv, location, _ = make(tmp, model)
        return [*argv, *extra], location, Path(argv[argv.index("-o") + 1])
    return build


def _plans_change(change: Callable[[dict], None]):
    """The model copy's plans.json changed by ``change`` (a dict of the 3d_tiny configuration and the plans)."""
    def damage(model: Path) -> Path:
        path = model / "plans.json"
        plans = json.loads(path.read_text())
        change(plans)
        path.write_text(json.dumps(plans))
        return path
    return damage


def _dataset_labels(model: Path) -> Path:
    path = model / "dataset.json"
    dataset = json.loads(path.read_text())
    dataset["labels"]["extra"] = 4
    path.write_text(json.dumps(dataset))
    return path


def _predict_unknown_dataset(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, location, _ = _predict(lambda files: files["arterial"])(tmp, model)
    _with_env_dataset(tmp)
    at = argv.index("-m")
    argv[at:at + 2] = ["-d", "999", "-c", "3d_fullres"]
    return argv, location, Path("-d 999")


def _phantom_into(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    out = tmp / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own files")
    return ["phantom", str(out), "--cases", "1"], out, out


def _demo_into(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    _, out, _ = _phantom_into(tmp, model)
    return ["demo", "--workdir", str(out)], out, out


def _locator_unknown(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    folder = _with_env_dataset(tmp)
    return ["locator-dataset", "-d", "PancreasDualPhase", "--target-id", "8"], folder.parents[1] / "raw", \
        Path("-d PancreasDualPhase")


def _register_same_file(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    argv, out, _ = _register(lambda files: files["arterial"])(tmp, model)
    argv[argv.index("--moving") + 1] = argv[argv.index("--fixed") + 1]
    return argv, out, Path(argv[argv.index("--fixed") + 1])


def _crop_of_one_voxel(files: Dict[str, Path]) -> Path:
    label = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    label[6, 12, 12] = 1
    _write(_image(label), files["label"])
    return files["label"]


def _convert_crop(corrupt: Callable[[Dict[str, Path]], Path], margin: str):
    def build(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
        argv, raw, named = _convert(corrupt)(tmp, model)
        return [*argv, "--crop-to-label", margin], raw, named
    return build


def _uncrop_label_values(tmp: Path, model: Optional[Path]) -> Tuple[List[str], Path, Path]:
    """A prediction with label 7 pasted back onto its full image (a box as big as the image)."""
    prediction = _write(_image(_label()), tmp / "predictions" / "case_a.nii.gz")
    _label_values(prediction)
    _write(_image(_ct(0)), tmp / "full" / "case_a.nii.gz")
    size = list(reversed(SHAPE_ZYX))
    box = {"start_xyz": [0, 0, 0], "size_xyz": size, "full_size_xyz": size, "spacing_xyz": list(SPACING_XYZ),
           "origin_xyz": [-10.0, 20.0, 5.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    (tmp / "crop_boxes.json").write_text(json.dumps({"margin_mm": 5, "reference_phase": "arterial",
                                                    "cases": {"case_a": box}}))
    return ["uncrop", str(tmp / "predictions"), "--boxes", str(tmp / "crop_boxes.json"), "--reference",
            str(tmp / "full"), "-o", str(tmp / "uncropped")], tmp / "uncropped", prediction


SCENARIOS.update({
    # things users cannot rebuild
    "cpu-config/nnunet-configuration": Scenario("cpu-config", r"'2d' is one of nnU-Net's own configurations",
                                                _cpu_config(["-c", "2d"]), needs_model=True),
    "cpu-config/inherits-from-itself": Scenario("cpu-config", r"'3d_fullres' is the configuration it inherits from",
                                                _cpu_config(["-c", "3d_fullres", "--patch-size", "16", "32", "32"]),
                                                needs_model=True),
    "cpu-config/trained-configuration": Scenario(
        "cpu-config", r"configuration '3d_cpu' exists with other settings; 1 trained checkpoints use it",
        _cpu_config(["-c", "3d_cpu", "--patch-size", "16", "16", "16"], _trained_configuration), needs_model=True),
    "cpu-config/patch-larger-than-images": Scenario("cpu-config", r"more than 2 times the largest image",
                                                    _cpu_config(["--patch-size", "64", "64", "64"]),
                                                    needs_model=True),
    "cpu-config/spacing-factor-too-coarse": Scenario("cpu-config", r"more than 2 times|too coarse",
                                                     _cpu_config(["--spacing-factor", "50"]), needs_model=True),
    "cpu-config/name-not-a-folder-name": Scenario("cpu-config", r"configuration name '\.\./x' must be letters",
                                                  _cpu_config(["-c", "../x"]), needs_model=True),
    "cpu-config/unknown-dataset": Scenario("cpu-config", r"-d 777: no such dataset in .*\(datasets there: "
                                           r"Dataset007_Bad\)", lambda tmp, model: (
                                               ["cpu-config", "-d", "777"], _with_env_dataset(tmp), Path("-d 777"))),
    "predict/qc-onto-model-plans": Scenario("predict", r"--qc lies inside the trained model folder",
                                            _predict_qc(lambda model, out: model / "plans.json"), needs_model=True),
    "predict/qc-onto-checkpoint": Scenario(
        "predict", r"--qc lies inside the trained model folder",
        _predict_qc(lambda model, out: model / "fold_0" / "checkpoint_final.pth"), needs_model=True),
    "predict/qc-is-the-output": Scenario("predict", r"--qc is the same path as -o",
                                         _predict_qc(lambda model, out: out), needs_model=True),
    "evaluate/output-inside-truth": Scenario("evaluate", r"-o lies inside the input folder .*truth",
                                             _evaluate_into_truth),
    "evaluate/csv-onto-summary": Scenario("evaluate", r"is the same path as -o", _evaluate_csv_onto_json),
    "phantom/folder-of-other-files": Scenario("phantom", r"holds other files and no phantoms\.json",
                                              _phantom_into),
    "demo/folder-of-other-files": Scenario("demo", r"holds other files and no phantoms_full/phantoms\.json",
                                           _demo_into),
    # implausible input
    "evaluate/same-folder": Scenario("evaluate", r"PRED_DIR is GT_DIR", _evaluate_same_folder),
    "predict/phase-given-twice": Scenario("predict", r"phase arterial given twice", _predict_twice_given,
                                          needs_model=True),
    "predict/same-file-both-phases": Scenario("predict", r"given as both arterial and venous", _predict(
        lambda files: _replace(files, "venous", files["arterial"])), needs_model=True),
    "predict/same-voxels": Scenario("predict", r"the same voxels as .*arterial\.nii\.gz", _predict(
        lambda files: _copy_of(files, "arterial", "venous")), needs_model=True),
    "predict/header-disagrees": Scenario("predict", r"NIfTI header disagrees with itself: the sform gives voxel "
                                         r"sizes \(2\.5, 2\.5, 2\.5\) mm, pixdim \(1\.0, 1\.0, 1\.0\)",
                                         _predict(lambda files: _uncompressed(files, "venous",
                                                                              _nifti_header_disagrees)),
                                         needs_model=True),
    "predict/blank-tail": Scenario("predict", r"the last 5 of 12 slices are all exactly 0", _predict(
        lambda files: _uncompressed(files, "arterial", _blank_tail)), needs_model=True),
    "predict/intercept-twice": Scenario("predict", r"rescale intercept applied twice",
                                        _predict(_then(_intercept_twice, "venous")), needs_model=True),
    "predict/wrong-slope": Scenario("predict", r"below -1124 \(air is -1000 HU\)", _predict(
        lambda files: (_with_air(files, "venous"), _wrong_slope(files["venous"]), files["venous"])[2]),
        needs_model=True),
    "predict/hu-plus-1024-with-padding": Scenario("predict", r"without the rescale intercept",
                                                  _predict(_then(_padded_without_intercept, "arterial")),
                                                  needs_model=True),
    "convert/same-voxels": Scenario("convert", r"the same voxels as .*arterial\.nii\.gz",
                                    _convert(lambda files: _copy_of(files, "arterial", "venous"))),
    "convert/header-disagrees": Scenario("convert", r"NIfTI header disagrees with itself",
                                         _convert(lambda files: _uncompressed(files, "arterial",
                                                                              _nifti_header_disagrees))),
    "convert/blank-tail": Scenario("convert", r"the last 5 of 12 slices are all exactly 0",
                                   _convert(lambda files: _uncompressed(files, "venous", _blank_tail))),
    "convert/intercept-twice": Scenario("convert", r"rescale intercept applied twice",
                                        _convert(_then(_intercept_twice, "arterial"))),
    "convert/halved-slope": Scenario("convert", r"almost none at air \(-1000 HU\) or lung; looks like a rescale "
                                     r"slope below 1", _convert(
        lambda files: (_with_air(files, "venous"), _halved_slope(files["venous"]), files["venous"])[2])),
    # DICOM studies: phases never guessed, labels never placed on another series
    "convert/study-two-reconstructions": Scenario("convert", r"'ART [15]mm'.* and .*'ART [15]mm'.* are both the "
                                                  r"arterial", _convert_study(_study_two_reconstructions)),
    "convert/study-timing-contradicts": Scenario("convert", r"timing tags contradict each other: "
                                                 r".*ContentTime before it",
                                                 _convert_study(_study_timing_contradicts)),
    "convert/study-seg-of-another-series": Scenario("convert", r"references a series not in the case",
                                                    _convert_study(_study_segmentation_of_another_series)),
    "convert/study-seg-beside-of-no-study": Scenario(
        "convert", r"beside the study folders references none of their series",
        _convert_study(_study_segmentation_beside_of_no_study)),
    "convert/crop-smaller-than-a-phase": Scenario("convert", r"the label's box \+ 1 mm is \(\d+, \d+, \d+\) voxels",
                                                  _convert_crop(_crop_of_one_voxel, "1")),
    "register/same-file": Scenario("register", r"given as both fixed and moving", _register_same_file),
    "register/blank-tail": Scenario("register", r"slices are all exactly 0",
                                    _register(lambda files: _uncompressed(files, "venous", _blank_tail))),
    "register/header-disagrees": Scenario("register", r"NIfTI header disagrees with itself",
                                          _register(lambda files: _uncompressed(files, "arterial",
                                                                                _nifti_header_disagrees))),
    # one case layout
    "convert/two-files-one-phase": Scenario("convert", r"a second file for phase venous beside venous\.nii",
                                            _convert(_second_file_for_venous)),
    "predict/folder-two-files-one-phase": Scenario("predict", r"a second file for phase venous", _predict_folder(
        lambda case: _second_file_for_venous({"venous": case / "venous.nii.gz"})), needs_model=True),
    # no traceback: options that do nothing, model folders that disagree with their checkpoint, datasets by name
    "predict/qc-in-folder-mode": Scenario("predict", r"--qc is for one case",
                                          _predict_options(["--qc", "qc.json"], folder=True), needs_model=True),
    "predict/locator-folds-without-locator": Scenario("predict", r"--locator-folds .* need --locator",
                                                      _predict_options(["--locator-folds", "1"]), needs_model=True),
    "predict/model-labels": Scenario("predict", r"labels .*'extra': 4.*, but .* was trained with",
                                     _predict_with_model(_dataset_labels), needs_model=True),
    "predict/model-widths": Scenario("predict", r"features per stage \[1, 2\], but .* was trained with",
                                     _predict_with_model(_plans_change(lambda plans: plans["configurations"][
                                         "3d_tiny"]["architecture"]["arch_kwargs"].update(
                                         features_per_stage=[1, 2]))), needs_model=True),
    "predict/model-patch-size-0": Scenario("predict", r"has patch size \[0, 32, 32\]",
                                           _predict_with_model(_plans_change(lambda plans: plans["configurations"][
                                               "3d_tiny"].update(patch_size=[0, 32, 32]))), needs_model=True),
    "predict/model-without-configuration": Scenario("predict", r"no usable configuration '3d_tiny'",
                                                    _predict_with_model(_plans_change(
                                                        lambda plans: plans["configurations"].pop("3d_tiny"))),
                                                    needs_model=True),
    "predict/unknown-dataset": Scenario("predict", r"-d 999: no such dataset .*\(datasets there: Dataset007_Bad\)",
                                        _predict_unknown_dataset, needs_model=True),
    "locator-dataset/unknown-dataset": Scenario("locator-dataset", r"no such dataset .*Dataset007_Bad",
                                                _locator_unknown),
    "uncrop/label-values": Scenario("uncrop", r"\[7\]|\{7\}", _uncrop_label_values),
})

#: Numeric options out of range: refused while the options are parsed (argparse: exit 2, the option named).
OPTION_CASES: Dict[str, Tuple[List[str], str]] = {
    "options/convert-crop-margin-huge": (["convert", "in", "-d", "7", "--name", "X", "--crop-to-label", "1e300"],
                                         "--crop-to-label"),
    "options/convert-dataset-id": (["convert", "in", "-d", "1000", "--name", "X"], "-d/--dataset"),
    "options/predict-locator-margin-huge": (["predict", "-i", "in", "-m", "m", "-o", "o", "--locator-margin",
                                             "1e300"], "--locator-margin"),
    "options/predict-step-size-zero": (["predict", "-i", "in", "-m", "m", "-o", "o", "-step_size", "0"],
                                       "-step_size/--step-size"),
    "options/predict-part-id-negative": (["predict", "-i", "in", "-m", "m", "-o", "o", "-part_id", "-1"],
                                         "-part_id"),
    "options/split-seed-negative": (["split", "-d", "7", "--seed", "-1"], "--seed"),
    "options/split-seed-huge": (["split", "-d", "7", "--seed", "1e20"], "--seed"),
    "options/split-one-fold": (["split", "-d", "7", "--folds", "1"], "--folds"),
    "options/cpu-config-patch-zero": (["cpu-config", "-d", "7", "--patch-size", "0", "32", "32"], "--patch-size"),
    "options/cpu-config-patch-negative": (["cpu-config", "-d", "7", "--patch-size", "-16", "32", "32"],
                                          "--patch-size"),
    "options/cpu-config-patch-one-voxel": (["cpu-config", "-d", "7", "--patch-size", "1", "1", "1"],
                                           "--patch-size"),
    "options/cpu-config-spacing-factor-huge": (["cpu-config", "-d", "7", "--spacing-factor", "1000"],
                                               "--spacing-factor"),
    "options/cpu-config-features-zero": (["cpu-config", "-d", "7", "--base-features", "0"], "--base-features"),
    "options/cpu-config-batch-size-zero": (["cpu-config", "-d", "7", "--batch-size", "0"], "--batch-size"),
    "options/phantom-cases-zero": (["phantom", "out", "--cases", "0"], "--cases"),
    "options/report-overlays-negative": (["report", "a=b", "--gt", "g", "-o", "r", "--overlays", "-1"],
                                         "--overlays"),
}


@pytest.fixture
def model_for(request) -> Callable[[Scenario], Optional[Path]]:
    """The tiny trained model of conftest's ``predict_model``, only for scenarios that need one."""
    def get(scenario: Scenario) -> Optional[Path]:
        return request.getfixturevalue("predict_model") if scenario.needs_model else None
    return get


@pytest.mark.parametrize("scenario_id", sorted(SCENARIOS))
def test_bad_input_exits_1_with_one_line_and_writes_nothing(scenario_id: str, tmp_path: Path, model_for,
                                                            capsys: pytest.CaptureFixture, monkeypatch) -> None:
    for variable in ("raw", "preprocessed", "results"):  # nnU-Net's folders, for -d scenarios
        monkeypatch.setenv(f"nnUNet_{variable}", str(tmp_path / variable))
    scenario = SCENARIOS[scenario_id]
    argv, output, named = scenario.build(tmp_path, model_for(scenario))
    before = _snapshot(output)
    inputs_before = {name: value for name, value in _snapshot(tmp_path).items()
                     if not (tmp_path / name).resolve().is_relative_to(output.resolve())}
    capsys.readouterr()

    assert main(argv) == 1

    error = capsys.readouterr().err
    # progress bars (tqdm, on stderr) end with a line break before the error line
    lines = [line for line in re.split(r"[\r\n]+", error) if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and error.rstrip().endswith(lines[0]), error
    assert lines[0].startswith(f"nnunet-hpn {scenario.command}: error: "), lines[0]
    assert str(named) in lines[0], f"{named} not named in: {lines[0]}"
    assert re.search(scenario.problem, lines[0]), f"{scenario.problem!r} not in: {lines[0]}"
    assert _snapshot(output) == before, f"{output} changed"
    inputs_after = {name: value for name, value in _snapshot(tmp_path).items()
                    if not (tmp_path / name).resolve().is_relative_to(output.resolve())}
    assert inputs_after == inputs_before, "an input changed"
    leftovers = [path.name for path in output.parent.iterdir() if path.name.startswith(".")]
    assert not leftovers, f"temporary files left next to {output}: {leftovers}"


def test_every_scenario_is_in_the_docs_table() -> None:
    documented = set(re.findall(r"^\| `([a-z0-9-]+/[a-z0-9-]+)` \|", DOC.read_text(), flags=re.MULTILINE))
    assert documented == set(SCENARIOS) | set(OPTION_CASES)


@pytest.mark.parametrize("case_id", sorted(OPTION_CASES))
def test_numeric_options_are_range_checked_when_parsed(case_id: str, capsys: pytest.CaptureFixture) -> None:
    argv, option = OPTION_CASES[case_id]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"nnunet-hpn {argv[0]}: error: argument {option}: "), last
    assert "Traceback" not in last


def test_truncated_file_really_is_damaged(tmp_path: Path) -> None:
    """The truncation helper leaves a file whose gzip stream ends early (SimpleITK alone would zero-fill it)."""
    path = _write(_image(_ct(0)), tmp_path / "image.nii.gz")
    _truncate(path)
    with pytest.raises(EOFError):
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass


def test_unusual_intensities_are_accepted_with_the_override(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv, raw, _ = _convert(_then(_hu_plus_1024, "venous"))(tmp_path, None)
    assert main(argv) == 1 and "--allow-unusual-intensities accepts it" in capsys.readouterr().err
    assert main([*argv, "--allow-unusual-intensities"]) == 0
    assert (raw / "Dataset007_Bad" / "imagesTr" / "case_a_0001.nii.gz").is_file()


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_CTS = ("lits_liver_crop_117/lits117_image.nii.gz", "totalsegmentator/example_ct_sm.nii.gz",
            "tcia_cc_tumor_heterogeneity_ccth_a01/ct_abdomen_pelvis.nii.gz")


@pytest.mark.parametrize("relative", REAL_CTS)
def test_real_ct_passes_the_gate_and_each_rescale_mistake_is_named(relative: str) -> None:
    """A real CT in HU passes :func:`ct_value_problem`; the same voxels with the intercept missing or applied twice,
    or with the slope doubled or halved, are each refused with the mistake named."""
    path = REAL / relative
    if not path.is_file():
        pytest.skip(f"real CT ../shared/data/real/{relative} absent")
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    assert ct_value_problem(hu) is None
    assert "intercept" in ct_value_problem(hu + 1024)
    assert "intercept applied twice" in ct_value_problem(hu - 1024)
    assert "slope" in ct_value_problem(hu * 2) or "outside any CT range" in ct_value_problem(hu * 2)
    assert "slope below 1" in ct_value_problem(np.round(hu / 2))


# ------------------------------------------------------------------------------------------------ what is accepted

def test_convert_takes_uncompressed_nifti_as_the_case_layout_says(tmp_path: Path) -> None:
    argv, raw, _ = _convert(lambda files: _uncompressed(files, "venous"))(tmp_path, None)
    assert main(argv) == 0
    written = raw / "Dataset007_Bad" / "imagesTr" / "case_a_0001.nii.gz"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cases" / "case_a" / "venous.nii"))))


def test_phantom_replaces_an_earlier_set_whole(tmp_path: Path) -> None:
    out = tmp_path / "phantoms"
    assert main(["phantom", str(out), "--cases", "2", "--seed", "1"]) == 0
    assert main(["phantom", str(out), "--cases", "1", "--seed", "2"]) == 0
    listed = [case["case_id"] for case in json.loads((out / "phantoms.json").read_text())["cases"]]
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == listed == ["hpn_000"]


def test_register_twice_leaves_only_the_second_runs_files(tmp_path: Path) -> None:
    argv, out, _ = _register(lambda files: files["arterial"], with_labels=True)(tmp_path, None)
    assert main(argv) == 0 and (out / "warped_label.nii.gz").is_file()
    without_labels = argv[: argv.index("--moving-label")]
    assert main(without_labels) == 0
    assert sorted(path.name for path in out.iterdir()) == ["displacement.nii.gz", "qc.json", "warped.nii.gz"]


def test_report_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    first, second = _label_folders(tmp_path)
    truth = tmp_path / "truth"
    shutil.copytree(first, truth)
    out = tmp_path / "report"
    argv = ["report", f"a={first}", f"b={second}", "--gt", str(truth), "-o", str(out)]
    assert main(argv) == 0
    (out / "boxplot_mine.png").write_bytes(b"my own figure")
    assert main(argv) == 0
    assert (out / "boxplot_mine.png").read_bytes() == b"my own figure"


def test_cpu_config_takes_a_dataset_name_notes_rounding_and_survives_concurrent_runs(
        predict_model: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from nnunet_hpn.nnunet.plans_tools import add_small_configuration

    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    for variable in ("raw", "results"):
        monkeypatch.setenv(f"nnUNet_{variable}", str(tmp_path / variable))
    argv, folder, plans_file = _cpu_config([])(tmp_path, predict_model)
    assert main(["cpu-config", "-d", "Bad", "-c", "3d_odd", "--patch-size", "17", "33", "31"]) == 0
    out = capsys.readouterr().out
    assert "note: patch size 17 33 31 rounded to" in out
    with ThreadPoolExecutor(4) as pool:  # concurrent writers: every configuration lands, the file stays JSON
        list(pool.map(lambda name: add_small_configuration(plans_file, name, patch_size=(16, 32, 32)),
                      [f"3d_c{i}" for i in range(8)]))
    configurations = json.loads(plans_file.read_text())["configurations"]
    assert {f"3d_c{i}" for i in range(8)} | {"3d_odd"} <= set(configurations)


def test_registration_of_half_overlapping_phases_warns_about_coverage(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    argv, out, _ = _register(lambda files: files["arterial"])(tmp_path, None)
    venous = Path(argv[argv.index("--moving") + 1])
    image = sitk.ReadImage(str(venous))
    origin = list(image.GetOrigin())
    origin[0] += 0.5 * image.GetSize()[0] * image.GetSpacing()[0]  # half the image to the side
    image.SetOrigin(origin)
    _write(image, venous)
    argv[argv.index("--method") + 1] = "none"
    assert main(argv) == 0
    warnings_shown = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert any(str(venous) in line and "covers only 50% of the fixed image's bounding box" in line
               for line in warnings_shown), warnings_shown
