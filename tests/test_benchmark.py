"""scripts/benchmark.py: the rows it builds, its training step, the ✓ / ✗ marks, and a smoke run with tiny sizes.

No timing assertions: times are only checked to be positive."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_hpn.nnunet.trainers.hpn_trainer import SegmentationPlusPairingLoss

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmark.py"
TINY = ["--patch", "16", "--features", "4", "16", "--batch", "2"]


@pytest.fixture(scope="module")
def benchmark():
    """scripts/benchmark.py as a module (scripts/ is on pytest's pythonpath)."""
    import benchmark as module

    return module


def test_rows_are_built_by_their_trainers_from_one_plans_entry(benchmark) -> None:
    configurations = {b: benchmark.plans_configuration([16, 16, 16], 4, 16, 2, b) for b in ("unet", "resdsn")}
    counts = {key: benchmark.count_forward_flops(spec, configurations[spec.backbone], 4)
              for key, spec in benchmark.MODELS.items()}
    flops = {key: c[0] for key, c in counts.items()}
    assert counts["hypernet"] == counts["hpn_unet"]  # the same network; only the loss differs
    assert counts["nnunet_onednn"] == counts["nnunet"]  # the same network; only the batch-1 CPU kernel differs
    assert flops["hpn_unet"] > 2 * flops["nnunet"] and flops["hpn_resdsn"] > 2 * flops["nnunet"]
    assert flops["hpn_equalcost"] <= 1.1 * flops["nnunet"]
    device = torch.device("cpu")
    for key, spec in benchmark.MODELS.items():
        configuration = configurations[spec.backbone]
        setup = benchmark.make_training_setup(spec, configuration, 4, device, "off", False, False)
        network = benchmark.unwrap_network(setup.network)
        expected = {"nnunet": "PlainConvUNet", "nnunet_onednn": "PlainConvUNet",
                    "hpn_resdsn": "HyperPairedResDSN"}.get(key, "HyperPairedUNet")
        assert type(network).__name__ == expected
        assert isinstance(setup.loss, SegmentationPlusPairingLoss) == (
            key not in ("nnunet", "nnunet_onednn", "hypernet"))
        convs = [type(m).__name__ for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
        assert set(convs) == ({"Conv3d"} if key == "nnunet" else {"OneDNNConv3d"})  # stock baseline untouched
        data, targets = benchmark.synthetic_batch(configuration, 4, device, channels_last=False)
        assert data.shape == (2, 2, 16, 16, 16) and [t.shape[2:] for t in targets] == [(16, 16, 16), (8, 8, 8)]
        before = [p.detach().clone() for p in network.parameters()]
        loss = setup.step(data, targets)
        assert torch.isfinite(loss) and loss.device == device
        assert any(not torch.equal(b, p) for b, p in zip(before, network.parameters()))  # the optimizer stepped


def test_table_marks_time_ratios_against_the_flop_bound(benchmark) -> None:
    specs = benchmark.MODELS
    rows = [benchmark.Row(specs["nnunet"], 1_000_000, 10**9, 1.0, 100.0, 2.0, 16.0, {"feature_map_size": 10**7}),
            benchmark.Row(specs["hpn_unet"], 3_000_000, 2 * 10**9, 2.1, 250.0, 4.5, 30.0,
                          {"feature_map_size": 3 * 10**7})]
    table = benchmark.format_table(rows)
    hpn = table.splitlines()[-1]
    # FLOP ratio 2.00 -> bound 2.20: training 2.10 within, inference 2.25 above, mirrored 1.88 within
    assert "| 2.00 | 2.20 | 2.100 | 2.10 ✓ |" in hpn and "| 2.25 ✗ |" in hpn and "| 1.88 ✓ |" in hpn
    assert "| 30.00 | 250 | 2.50 |" in hpn


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.?\d*", cell)]


def test_smoke_run_with_tiny_sizes(tmp_path: Path) -> None:
    doc = tmp_path / "BENCH.md"
    doc.write_text("# existing\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--repeats", "1", "--warmup", "0", "--case", "16", "24", "24",
         "--inference-repeats", "1", "--models", "nnunet", "hpn_unet", "--threads", "1", "--doc", str(doc),
         "--title", "smoke"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# existing\n") and "## smoke" in text and "device: CPU" in text
    assert "--patch 16" in text and "torch " in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "parameters" not in line
            and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["nnU-Net PlainConvUNet, 2 channels", "HPN, U-Net backbone"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert len(cells) == 13 and "–" not in cells[4:] + cells[:3]  # every measurement is there
        assert all(_numbers(c) and _numbers(c)[0] > 0 for c in cells if c != "–")
    baseline = [c.strip() for c in rows[0].split("|")[2:-1]]
    assert [baseline[i] for i in (2, 5, 8, 10, 12)] == ["1.00"] * 5
    hpn = [c.strip() for c in rows[1].split("|")[2:-1]]
    assert all(hpn[i][-1] in "✓✗" for i in (5, 10, 12))  # time ratios carry the verdict
    assert re.search(r"Pairing loss .* ms = \d+\.\d % of the HPN U-Net training step", text)
    assert proc.stdout.count("## smoke") == 1  # also printed


def test_conv_kernel_script_smoke_run(tmp_path: Path) -> None:
    """scripts/benchmark_conv_kernels.py at a quarter of its grid: four tables, every time and rate positive."""
    doc = tmp_path / "BENCH.md"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "benchmark_conv_kernels.py"), "--scale", "0.25", "--repeats",
         "1", "--threads", "1", "--append-to", str(doc)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = doc.read_text()
    assert "convolution kernels, CPU" in text and "--scale 0.25" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line
            and not line.startswith("| grid") and not line.startswith("| memory format")]
    norms = [r for r in rows if "Norm" in r]
    inference = [r for r in rows if "conv" in r.split("|")[3]]
    widths = [r for r in rows if r.split("|")[1].strip().endswith("³") and r not in norms + inference]
    grouped = [r for r in rows if r.split("|")[1].strip() in ("contiguous", "channels_last_3d")]
    assert len(widths) == 13 and len(grouped) == 6 and len(norms) == 6 and len(inference) == 13
    assert all(float(c) > 0 for r in inference for c in r.split("|")[4:-1])
    for row in widths + grouped:
        numbers = [float(c) for c in row.split("|")[3:-1]]
        assert all(n > 0 for n in numbers)
    assert all(r.split("|")[-2].strip() in ("yes", "no") for r in norms)
