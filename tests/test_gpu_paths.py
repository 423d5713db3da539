"""nnU-Net's GPU-only code paths, exercised on the CPU at toy size: a training step of HPNTrainer with the network
compiled by inductor (nnU-Net compiles only on CUDA; here its ``_do_i_compile`` is forced), a step through nnU-Net's
autocast + GradScaler branch, and DDP (gloo, the harness of test_ddp.py) with the compiled network."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch._dynamo import OptimizedModule

from conftest import TINY_CONFIGURATION
from test_ddp import WORLD_SIZE, _batch, _free_port, _worker

#: three stages, one convolution per stage, 2-4 features: the smallest network with nnU-Net's deep supervision, so
#: that inductor's compilation stays short
TOY_CONFIGURATION = "3d_toy"


def toy_plans(plans: dict, batch_size: int) -> dict:
    """The fixture's plans plus TOY_CONFIGURATION (the tiny configuration's data, a toy network, ``batch_size``)."""
    plans = copy.deepcopy(plans)
    entry = copy.deepcopy(plans["configurations"][TINY_CONFIGURATION])
    entry.update(patch_size=[8, 16, 16], batch_size=batch_size)
    entry["architecture"]["arch_kwargs"].update(
        n_stages=3, features_per_stage=[2, 4, 4], kernel_sizes=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1] * 3, n_conv_per_stage_decoder=[1] * 2)
    plans["configurations"][TOY_CONFIGURATION] = entry
    return plans


def _trainer(planned_dataset, monkeypatch, compiled: bool, batch_size: int = 1):
    from nnunet_hpn.nnunet.trainers import HPNTrainer

    for key, value in planned_dataset["env"].items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())
    trainer = HPNTrainer(plans=dict(toy_plans(planned_dataset["plans"], batch_size), continue_training=False),
                         configuration=TOY_CONFIGURATION, fold=0, dataset_json=dataset_json, device=torch.device("cpu"))
    trainer._do_i_compile = lambda: compiled  # nnU-Net: compiled on CUDA only
    trainer.initialize()
    return trainer


def test_compiled_hpn_training_step_matches_eager(planned_dataset, monkeypatch) -> None:
    """nnU-Net's train_step with the HPN network compiled (inductor on CPU): the loss (segmentation + pairing) and
    the clipped gradients are the eager network's, and the pairing features reach the loss through compile."""
    from nnunet_hpn.model.pairing_loss import pairing_loss
    from nnunet_hpn.nnunet.trainers.hpn_trainer import SegmentationPlusPairingLoss

    torch.manual_seed(0)
    trainer = _trainer(planned_dataset, monkeypatch, compiled=True)
    assert isinstance(trainer.network, OptimizedModule) and isinstance(trainer.loss, SegmentationPlusPairingLoss)
    batch = _batch(trainer, np.random.default_rng(0))
    eager = copy.deepcopy(trainer.network._orig_mod)
    eager_loss = trainer.loss.segmentation_loss(eager(batch["data"]), batch["target"])
    eager_loss = eager_loss + trainer.loss.weight * pairing_loss(eager.pop_pairing_features())
    eager_loss.backward()
    torch.nn.utils.clip_grad_norm_(eager.parameters(), 12)

    loss = float(trainer.train_step(batch)["loss"])
    assert trainer.loss.pairing_count == 1  # the compiled forward kept the features for the pairing loss
    assert loss == pytest.approx(float(eager_loss.detach()), rel=1e-4, abs=1e-5)
    # all gradients as one vector (a parameter without one, e.g. a head whose deep-supervision weight is 0: zeros)
    compiled_gradients, eager_gradients = (
        torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in network.parameters()])
        for network in (trainer.network._orig_mod, eager))
    assert torch.linalg.vector_norm(compiled_gradients - eager_gradients) <= 1e-3 * torch.linalg.vector_norm(
        eager_gradients)
    assert np.isfinite(float(trainer.train_step(batch)["loss"]))  # the second step reuses the compiled graph


def test_training_step_under_autocast_with_grad_scaler(planned_dataset, monkeypatch) -> None:
    """nnU-Net's CUDA branch of train_step (autocast + GradScaler: scale, backward, unscale, clip, step, update),
    taken on the CPU with float16 autocast: finite loss and weights, float16 activations, the pairing loss in
    float32, and a loss close to the float32 step's."""
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module

    torch.manual_seed(0)
    trainer = _trainer(planned_dataset, monkeypatch, compiled=False)
    batch = _batch(trainer, np.random.default_rng(0))
    with torch.no_grad():
        reference = trainer.loss(trainer.network(batch["data"]), batch["target"])
    trainer.loss.pop_mean_pairing_loss()
    before = [p.detach().clone() for p in trainer.network.parameters()]
    dtypes = []
    # the decoder returns (deep-supervision logits, last decoder output per path)
    trainer.network.decoder.register_forward_hook(lambda module, args, output: dtypes.append(output[0][0].dtype))
    # nnU-Net autocasts only where device.type == "cuda"; elsewhere it enters dummy_context()
    monkeypatch.setattr(trainer_module, "dummy_context", lambda: torch.autocast("cpu", dtype=torch.float16))
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    loss = float(trainer.train_step(batch)["loss"])
    assert dtypes == [torch.float16]
    assert trainer.loss.pairing_sum.dtype == torch.float32
    assert np.isfinite(loss) and loss == pytest.approx(float(reference), rel=2e-2)
    assert trainer.grad_scaler.get_scale() > 0 and all(torch.isfinite(p).all() for p in trainer.network.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(trainer.network.parameters(), before))  # the step was taken


@pytest.fixture(scope="module")
def compiled_ddp_results(planned_dataset, tmp_path_factory) -> dict:
    """Two gloo ranks of test_ddp.py's harness, HPNTrainer with the network compiled before nnU-Net wraps it in DDP
    (global batch 2: one sample per rank, the toy network of the compiled single-process test)."""
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())
    env = {k: v for k, v in planned_dataset["env"].items() if k.startswith("nnUNet_")}
    env["nnUNet_results"] = str(tmp_path_factory.mktemp("ddp_compiled_results"))
    out_dir = tmp_path_factory.mktemp("ddp_compiled")
    jobs = [("HPNTrainer", TOY_CONFIGURATION, "compile")]
    mp.start_processes(_worker, args=(_free_port(), env, toy_plans(planned_dataset["plans"], 2), dataset_json, jobs,
                                      str(out_dir)), nprocs=WORLD_SIZE, join=True, start_method="spawn")
    return {rank: json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)}


def test_ddp_with_the_compiled_network(compiled_ddp_results) -> None:
    key = f"HPNTrainer/{TOY_CONFIGURATION}/compile"
    for rank in range(WORLD_SIZE):
        assert "error" not in compiled_ddp_results[rank][key], compiled_ddp_results[rank][key].get("error")
    result = compiled_ddp_results[0][key]
    assert result["compiled"] and result["pairing"] and result["pairing_steps"] == 2  # features survived compile
    assert result["missing_gradients"] == []
    assert result["gradients_equal_across_ranks"] and result["weights_equal_across_ranks"]
    assert result["finite"] and all(np.isfinite(result["losses"]))
    assert compiled_ddp_results[1][key]["losses"] != result["losses"]  # the ranks saw different data


def test_predict_device_defaults_to_cuda_where_available(monkeypatch, capsys) -> None:
    """``nnunet-hpn predict`` as nnUNetv2_predict: -device cuda by default where CUDA is available; otherwise the
    CPU, said in one line; an explicit -device is kept."""
    from nnunet_hpn.cli import _predict_device, build_parser

    assert build_parser().parse_args(["predict", "-i", "in", "-m", "model", "-o", "out"]).device is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _predict_device(None) == "cuda" and capsys.readouterr().out == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _predict_device(None) == "cpu"
    assert capsys.readouterr().out.splitlines() == ["no CUDA device: predicting on the CPU (-device cpu)"]
    assert _predict_device("cpu") == "cpu" and capsys.readouterr().out == ""
