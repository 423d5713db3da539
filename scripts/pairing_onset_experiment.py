"""How soon does the dual-path network leave the all-background start, with and without the pairing loss?

A controlled CPU experiment on a preprocessed HPN dataset (e.g. the demo's): the same initial weights, the same
sequence of 32³ patches (2/3 centred on foreground, no data augmentation, constant learning rate), nnU-Net's
Dice + CE, SGD like nnU-Net; prints the foreground Dice of the training batches every 25 iterations.

    python scripts/pairing_onset_experiment.py hpn_demo/nnUNet_preprocessed/Dataset501_PancreasDualPhase \\
        --variants none channel --iterations 200
Variants: ``none`` (HyperNet), ``channel`` (HPN's pairing loss, λ = 0.5), ``pooled`` (an alternative reading of
Eq. 1: one correlation over channels × voxels per sample).
"""
import argparse
import json
import time
from pathlib import Path
from typing import List, Tuple

import blosc2
import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_hpn.model.pairing_loss import pairing_loss

PATCH = 32


def pooled_pairing_loss(features: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """−Pearson r over channels × voxels (per-channel centring), one value per sample, averaged."""
    fa, fb = [f.float().flatten(2) for f in features]
    fa, fb = fa - fa.mean(-1, keepdim=True), fb - fb.mean(-1, keepdim=True)
    r = (fa * fb).sum((1, 2)) / torch.sqrt((fa ** 2).sum((1, 2)) * (fb ** 2).sum((1, 2)) + 1e-12)
    return -r.mean()


def load_volumes(data_dir: Path) -> List[Tuple[np.ndarray, np.ndarray]]:
    images = sorted(f for f in data_dir.glob("*.b2nd") if not f.name.endswith("_seg.b2nd"))
    return [(np.asarray(blosc2.open(str(f))[:]), np.asarray(blosc2.open(str(f).replace(".b2nd", "_seg.b2nd"))[:]))
            for f in images]


def sample_batch(volumes, rng: np.random.Generator, batch_size: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, 2, 32, 32, 32) images and (B, 1, 32, 32, 32) labels; 2/3 of the patches centred on foreground."""
    images, labels = [], []
    for _ in range(batch_size):
        image, label = volumes[rng.integers(len(volumes))]
        if rng.random() < 2 / 3:
            fg = np.argwhere(label[0] > 0)
            centre = fg[rng.integers(len(fg))]
        else:
            centre = [rng.integers(s) for s in label.shape[1:]]
        start = [int(np.clip(c - PATCH // 2, 0, s - PATCH)) for c, s in zip(centre, label.shape[1:])]
        window = (slice(None),) + tuple(slice(s, s + PATCH) for s in start)
        images.append(image[window])
        labels.append(label[window])
    return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(labels)).float().clamp(min=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preprocessed_dataset", type=Path)
    parser.add_argument("-p", "--plans", default="nnUNetHPNPlans")
    parser.add_argument("-c", "--configuration", default="3d_cpu")
    parser.add_argument("--variants", nargs="+", default=["none", "channel"], choices=["none", "channel", "pooled"])
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    plans = json.loads((args.preprocessed_dataset / f"{args.plans}.json").read_text())
    arch = plans["configurations"][args.configuration]["architecture"]
    volumes = load_volumes(args.preprocessed_dataset / f"{args.plans}_3d_fullres")
    segmentation_loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                       weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    for variant in args.variants:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     2, 4, deep_supervision=False).train()
        optimizer = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
        dice_history, start = [], time.time()
        for iteration in range(1, args.iterations + 1):
            x, y = sample_batch(volumes, rng)
            output = net(x)
            features = net.pop_pairing_features()
            loss = segmentation_loss(output, y)
            if variant == "channel":
                loss = loss + 0.5 * pairing_loss(features)
            elif variant == "pooled":
                loss = loss + 0.5 * pooled_pairing_loss(features)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            optimizer.step()
            with torch.no_grad():
                truth, predicted = y[:, 0] > 0, output.argmax(1) > 0
                dice_history.append(2 * (truth & predicted).sum().item() /
                                    max(1, (truth.sum() + predicted.sum()).item()))
            if iteration % 25 == 0:
                print(f"{variant:8s} iteration {iteration:4d}  foreground Dice (last 25) "
                      f"{np.mean(dice_history[-25:]):.3f}  {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
