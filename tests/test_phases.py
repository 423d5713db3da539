"""nnunet_hpn.phases: the one reference-phase rule, dataset.json channel names, channel files."""
import json
from pathlib import Path

import pytest

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.phases import channel_file_name, channel_files, channel_names, read_channel_names, reference_phase


def test_reference_phase_rule():
    assert reference_phase(["arterial", "venous"]) == "arterial"
    assert reference_phase(["venous", "arterial"]) == "arterial"  # arterial wherever it is
    assert reference_phase(["noncontrast", "venous"]) == "noncontrast"  # else the first
    assert reference_phase(["arterial", "venous"], "venous") == "venous"
    with pytest.raises(HPNInputError, match=r"in_dir: reference phase 'delayed' is not one of"):
        reference_phase(["arterial", "venous"], "delayed", where="in_dir")
    with pytest.raises(HPNInputError, match="no phase"):
        reference_phase([])


def test_channel_names_in_channel_order(tmp_path: Path):
    dataset = {"channel_names": {"10": "j", "2": "c", "0": "a", "1": "b"}}
    assert channel_names(dataset) == ["a", "b", "c", "j"]  # integer order, not string order
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    assert read_channel_names(tmp_path / "dataset.json") == ["a", "b", "c", "j"]
    (tmp_path / "dataset.json").write_text('{"labels": {}}')
    with pytest.raises(HPNInputError, match=r"dataset\.json: no readable channel_names"):
        read_channel_names(tmp_path / "dataset.json")
    with pytest.raises(HPNInputError, match=r"missing"):
        read_channel_names(tmp_path / "nope.json")


def test_channel_files(tmp_path: Path):
    for case in ("a", "b_1"):
        for channel in range(3):
            (tmp_path / channel_file_name(case, channel)).touch()
    assert channel_file_name("b_1", 2) == "b_1_0002.nii.gz"
    files = channel_files(tmp_path, 3)
    assert {case: [path.name for path in paths] for case, paths in files.items()} == {
        "a": ["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"],
        "b_1": ["b_1_0000.nii.gz", "b_1_0001.nii.gz", "b_1_0002.nii.gz"]}
    (tmp_path / "a_0002.nii.gz").unlink()
    with pytest.raises(HPNInputError, match=r"case a has channels \[0, 1\], expected 0..2"):
        channel_files(tmp_path, 3)
