"""HyperPairedUNet: shapes, hyper-connection semantics, gradients, nnU-Net integration, benchmark smoke test."""
from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from benchmark import NNUNET_3D_OPERATIONS
from nnunet_hpn.model.hyper_connections import all_hyper_connection_names
from nnunet_hpn.model.network import HyperPairedResDSN, HyperPairedUNet
from nnunet_hpn.model.pairing_loss import pairing_loss

REPO_ROOT = Path(__file__).resolve().parents[1]
PATCH = (16, 16, 16)
SIX_DIRECTIONS = ["enc0->enc1", "enc1->enc0", "enc0->dec1", "enc1->dec0", "dec0->dec1", "dec1->dec0"]


def tiny_kwargs(**overrides) -> dict:
    """3 stages, features [4, 8, 16]: PlainConvUNet's kwargs without input_channels."""
    kwargs = dict(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        conv_op=nn.Conv3d,
        kernel_sizes=3,
        strides=[1, 2, 2],
        n_conv_per_stage=2,
        num_classes=4,
        n_conv_per_stage_decoder=1,
        conv_bias=False,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_net(seed: int = 0, initialize: bool = True, **overrides) -> HyperPairedUNet:
    torch.manual_seed(seed)
    network = HyperPairedUNet(input_channels=overrides.pop("input_channels", 2), **tiny_kwargs(**overrides))
    if initialize:
        network.apply(network.initialize)
    return network


def random_input(channels: int = 2, spatial: tuple[int, ...] = PATCH, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn((batch, channels, *spatial), generator=torch.Generator().manual_seed(seed))


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("backbone", ["unet", "resdsn"])
def test_output_shapes_with_and_without_deep_supervision(backbone: str) -> None:
    x = random_input(spatial=(8, 16, 16))
    network = tiny_net(backbone=backbone, deep_supervision=True)
    outputs = network(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 8, 16, 16), (2, 4, 4, 8, 8)]
    # nnU-Net's trainer toggles deep supervision this way (set_deep_supervision_enabled)
    network.decoder.deep_supervision = False
    logits = network(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 4, 8, 16, 16)
    torch.testing.assert_close(logits, outputs[0])


def test_two_dimensional_network_runs() -> None:
    network = tiny_net(conv_op=nn.Conv2d, norm_op=nn.InstanceNorm2d, deep_supervision=True)
    outputs = network(random_input(spatial=(16, 16)))
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 16, 16), (2, 4, 8, 8)]


def test_connection_names_and_validation() -> None:
    assert all_hyper_connection_names(2) == SIX_DIRECTIONS
    assert all_hyper_connection_names(1) == []
    assert len(all_hyper_connection_names(3)) == 18
    assert tiny_net().hyper_connections == tuple(SIX_DIRECTIONS)
    with pytest.raises(ValueError, match=r"enc0->enc1"):  # the message lists the valid names
        tiny_net(hyper_connections=["enc0->enc2"])
    with pytest.raises(ValueError, match="unknown"):
        tiny_net(hyper_connections=["dec0->enc1"])
    partial = tiny_net(hyper_connections=["enc0->enc1"])
    with pytest.raises(ValueError, match="not built"):
        partial.set_hyper_connection_active("enc1->enc0", False)
    with pytest.raises(ValueError, match="path_channels"):
        tiny_net(path_channels=[2])
    with pytest.raises(ValueError, match="backbone"):
        tiny_net(backbone="vnet")


def test_input_with_too_few_channels_is_rejected() -> None:
    with pytest.raises(ValueError, match="channel"):
        tiny_net()(random_input(channels=1))
    with pytest.raises(ValueError, match="channel"):
        tiny_net(path_channels=[1])(random_input(channels=1))


@pytest.mark.parametrize("name", SIX_DIRECTIONS)
def test_each_direction_changes_the_output_and_costs_parameters(name: str) -> None:
    x = random_input()
    network = tiny_net().eval()
    with torch.no_grad():
        reference = network(x)
        network.set_hyper_connection_active(name, False)
        assert not network.is_hyper_connection_active(name)
        switched_off = network(x)
        network.set_hyper_connection_active(name, True)
        torch.testing.assert_close(network(x), reference)
    assert (switched_off - reference).abs().max() > 1e-4

    without = tiny_net(hyper_connections=[n for n in SIX_DIRECTIONS if n != name])
    assert n_parameters(without) < n_parameters(network)
    assert name not in without.hyper_connections


@pytest.mark.parametrize("name", SIX_DIRECTIONS)
def test_a_lone_connection_carries_information_in_its_direction_only(name: str) -> None:
    """With only ``name`` built, switching it off changes the target path's features, not the source path's."""
    source, target = int(name[3]), int(name[-1])
    x = random_input()
    network = tiny_net(hyper_connections=[name])  # train mode: pairing features are stored
    with torch.no_grad():
        network(x)
        on = network.pop_pairing_features()
        network.set_hyper_connection_active(name, False)
        network(x)
        off = network.pop_pairing_features()
    torch.testing.assert_close(on[source], off[source])
    assert (on[target] - off[target]).abs().max() > 1e-4


@pytest.mark.parametrize("backbone", ["unet", "resdsn"])
def test_gradients_reach_every_parameter_of_both_paths(backbone: str) -> None:
    # resdsn: default init, since nnU-Net's zero-init of the last norm in residual blocks blocks conv grads at step 0
    network = tiny_net(backbone=backbone, deep_supervision=True, initialize=backbone == "unet")
    outputs = network(random_input())
    loss = sum(o.sum() for o in outputs) + pairing_loss(network.pop_pairing_features())
    loss.backward()
    without_grad = [name for name, p in network.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []
    for path in range(2):  # explicitly: both encoders
        assert all(p.grad.abs().sum() > 0 for p in network.encoder.stages[path].parameters())


def test_pairing_features_only_in_training_mode() -> None:
    network = tiny_net()
    x = random_input()
    network(x)
    features = network.pairing_features
    assert len(features) == 2 and all(f.shape == (2, 4, *PATCH) for f in features)
    assert network.pop_pairing_features() is features
    assert network.pairing_features is None and network.pop_pairing_features() is None
    network.eval()
    with torch.no_grad():
        network(x)
    assert network.pairing_features is None


def test_single_path_ignores_the_other_channel() -> None:
    network = tiny_net(path_channels=[1], deep_supervision=True).eval()
    assert network.hyper_connections == ()
    x = random_input()
    noisy = x.clone()
    noisy[:, 0] = torch.randn_like(noisy[:, 0]) * 100
    with torch.no_grad():
        for clean_output, noisy_output in zip(network(x), network(noisy)):
            torch.testing.assert_close(clean_output, noisy_output, rtol=0, atol=0)


def test_single_path_is_plain_conv_unet_on_that_channel() -> None:
    """Same parameters (renamed) -> same output as PlainConvUNet on channel 1 alone."""
    network = tiny_net(path_channels=[1], deep_supervision=True).eval()
    plain = PlainConvUNet(input_channels=1, **tiny_kwargs(deep_supervision=True)).eval()
    assert n_parameters(network) == n_parameters(plain)
    ours = network.state_dict()

    def our_key(plain_key: str) -> str:
        parts = plain_key.split(".")
        if parts[0] == "decoder" and parts[1] == "encoder":
            parts = parts[1:]
        if parts[0] == "encoder":  # encoder.stages.{s}.0.X -> encoder.stages.0.{s}.X
            return ".".join(["encoder", "stages", "0", parts[2], *parts[4:]])
        if parts[1] in ("stages", "transpconvs"):  # decoder.stages.{d}.X -> decoder.stages.0.{d}.X
            return ".".join(["decoder", parts[1], "0", *parts[2:]])
        return plain_key  # seg_layers are shared: same names
    plain.load_state_dict({key: ours[our_key(key)] for key in plain.state_dict()})
    x = random_input()
    with torch.no_grad():
        for ours_out, plain_out in zip(network(x), plain(x[:, 1:2])):
            torch.testing.assert_close(ours_out, plain_out)


def test_three_paths_build_and_run() -> None:
    network = tiny_net(input_channels=3, deep_supervision=True)
    assert len(network.hyper_connections) == 18
    outputs = network(random_input(channels=3, batch=1))
    assert [tuple(o.shape) for o in outputs] == [(1, 4, *PATCH), (1, 4, 8, 8, 8)]
    features = network.pop_pairing_features()
    assert len(features) == 3 and all(f.shape == (1, 4, *PATCH) for f in features)
    assert torch.isfinite(pairing_loss(features))


def test_state_dict_loads_strictly_across_deep_supervision_settings() -> None:
    trained_with_ds = tiny_net(deep_supervision=True)
    for_inference = tiny_net(seed=5, deep_supervision=False)
    for_inference.load_state_dict(trained_with_ds.state_dict(), strict=True)
    # inactive connections keep their weights: a network with a switched-off connection still loads
    trained_with_ds.set_hyper_connection_active("enc0->dec1", False)
    for_inference.load_state_dict(trained_with_ds.state_dict(), strict=True)


def test_initialize_follows_nnunet_conventions() -> None:
    network = tiny_net(backbone="resdsn")
    zero_norms = [m.conv2.norm.weight for m in network.modules() if type(m).__name__ == "BasicBlockD"]
    assert zero_norms and all((w == 0).all() for w in zero_norms)
    stem_conv = network.encoder.stems[0].convs[0].conv
    assert stem_conv.weight.std() > 0 and (stem_conv.bias is None or (stem_conv.bias == 0).all())


def _independent_feature_map_size(deep_supervision: bool) -> int:
    """Hand count for tiny_net(): 2 paths, all six connections, patch 16^3; channels x voxels."""
    voxels = {0: 16**3, 1: 8**3, 2: 4**3}
    features = {0: 4, 1: 8, 2: 16}
    encoder = 2 * sum(2 * features[s] * voxels[s] for s in range(3))  # 2 paths x 2 convs per stage
    decoder = 2 * sum((1 + 1) * features[s] * voxels[s] for s in range(2))  # 2 paths x (1 conv + transposed conv)
    heads = sum(4 * voxels[s] for s in (range(2) if deep_supervision else [0]))
    enc_to_enc = 2 * (features[0] * voxels[0] + features[1] * voxels[1])  # into stages 1 and 2, both targets
    enc_to_dec = 2 * (features[2] * voxels[2] + features[1] * voxels[1] + features[0] * voxels[0])
    dec_to_dec = 2 * features[1] * voxels[1]  # previous decoder output into the second transposed conv
    head_inputs = sum(features[s] * voxels[s] for s in (range(2) if deep_supervision else [0]))  # other path's half
    return encoder + decoder + heads + enc_to_enc + enc_to_dec + dec_to_dec + head_inputs


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_conv_feature_map_size(deep_supervision: bool) -> None:
    full = tiny_net(deep_supervision=deep_supervision)
    size = full.compute_conv_feature_map_size(PATCH)
    assert size == _independent_feature_map_size(deep_supervision)
    plain_two_channels = PlainConvUNet(input_channels=2, **tiny_kwargs(deep_supervision=deep_supervision))
    assert size > plain_two_channels.compute_conv_feature_map_size(PATCH) > 0
    # grows with every connection added
    sizes = [tiny_net(hyper_connections=SIX_DIRECTIONS[:k], deep_supervision=deep_supervision)
             .compute_conv_feature_map_size(PATCH) for k in range(7)]
    assert all(a < b for a, b in itertools.pairwise(sizes)) and sizes[-1] == size
    # one path: exactly nnU-Net's own count
    single = tiny_net(path_channels=[0], deep_supervision=deep_supervision)
    plain_one_channel = PlainConvUNet(input_channels=1, **tiny_kwargs(deep_supervision=deep_supervision))
    assert single.compute_conv_feature_map_size(PATCH) == plain_one_channel.compute_conv_feature_map_size(PATCH)
    residual_kwargs = tiny_kwargs(deep_supervision=deep_supervision)
    residual_kwargs["n_blocks_per_stage"] = residual_kwargs.pop("n_conv_per_stage")
    single_residual = HyperPairedResDSN(input_channels=2, path_channels=[0], **residual_kwargs)
    residual = ResidualEncoderUNet(input_channels=1, **residual_kwargs)
    assert single_residual.compute_conv_feature_map_size(PATCH) == residual.compute_conv_feature_map_size(PATCH)
    assert n_parameters(single_residual) == n_parameters(residual)


def _plans_arch_kwargs(**extra) -> dict:
    kwargs = {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage_decoder": [1, 1],
        **copy.deepcopy(NNUNET_3D_OPERATIONS),
    }
    kwargs.update(extra)
    return kwargs


@pytest.mark.parametrize(
    ("class_name", "arch_kwargs", "expected_class", "backbone"),
    [
        ("nnunet_hpn.model.network.HyperPairedUNet",
         _plans_arch_kwargs(n_conv_per_stage=[2, 2, 2], hyper_connections=["enc0->enc1", "dec1->dec0"]),
         HyperPairedUNet, "unet"),
        ("nnunet_hpn.model.network.HyperPairedResDSN",
         _plans_arch_kwargs(n_blocks_per_stage=[1, 2, 2]), HyperPairedResDSN, "resdsn"),
    ],
)
def test_builds_through_nnunet_get_network_from_plans(class_name, arch_kwargs, expected_class, backbone) -> None:
    torch.manual_seed(0)
    network = get_network_from_plans(
        class_name, arch_kwargs, ["conv_op", "norm_op", "dropout_op", "nonlin"],
        input_channels=2, output_channels=4, allow_init=True, deep_supervision=False,
    )
    assert type(network) is expected_class and network.backbone == backbone
    with torch.no_grad():
        logits = network.eval()(random_input(batch=1))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 4, *PATCH)
    assert np.isfinite(network.compute_conv_feature_map_size(PATCH))


def test_benchmark_script_smoke(tmp_path: Path) -> None:
    """scripts/benchmark.py's network-cost rows (nnU-Net's PlainConvUNet on both phases as 2 channels, HPN with both
    backbones) at a tiny size: ratios to the baseline, the section appended with its command and device."""
    import benchmark

    report = tmp_path / "bench.md"
    threads = torch.get_num_threads()
    try:
        table = benchmark.main(["--patch", "16", "--features", "4", "16", "--batch", "1", "--repeats", "1",
                                "--warmup", "0", "--models", "nnunet", "hpn_unet", "hpn_resdsn", "--no-inference",
                                "--no-memory", "--threads", "1", "--doc", str(report)])
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in table.splitlines() if line.startswith(("| nnU-Net ", "| HPN, "))]
    assert len(rows) == 3 and "PlainConvUNet" in rows[0] and "ResDSN" in rows[2]
    assert rows[0].count("| 1.00 ") == 2  # the baseline's ratios (FLOPs, training step)
    text = report.read_text()
    assert "torch " in text and "--patch 16" in text and "device: " in text and table in text
