"""nnunet_hpn.model.cpu_inference: batch-1 CPU inference through oneDNN gives nn.Conv3d's result and leaves training,
state dicts and other batch sizes alone."""
import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from nnunet_hpn.model.cpu_inference import OneDNNConv3d, use_onednn_for_cpu_inference

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def _conv_kernels(module: nn.Module, x: torch.Tensor) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    return {e.key for e in prof.key_averages() if e.key in ("aten::mkldnn_convolution", "aten::slow_conv3d_forward")}


def test_batch_one_inference_runs_onednn_with_the_same_result() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv3d(8, 8, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(8, 4, 3, stride=2, padding=1))
    converted_copy = use_onednn_for_cpu_inference(
        nn.Sequential(nn.Conv3d(8, 8, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(8, 4, 3, stride=2, padding=1)))
    converted_copy.load_state_dict(plain.state_dict())  # same keys
    assert all(type(m) is OneDNNConv3d for m in converted_copy if isinstance(m, nn.Conv3d))
    x = torch.randn(1, 8, 16, 40, 40)  # N*C*D*H = 5120 <= 20480: PyTorch's own choice is slow_conv3d
    with torch.no_grad():
        assert _conv_kernels(plain, x) == {"aten::slow_conv3d_forward"}
        assert _conv_kernels(converted_copy, x) == {"aten::mkldnn_convolution"}
        torch.testing.assert_close(converted_copy(x), plain(x), rtol=1e-4, atol=1e-5)
        assert converted_copy(x).shape == (1, 4, 8, 20, 20)
        counts = []
        for network in (plain, converted_copy):
            with FlopCounterMode(display=False) as counter:
                network(x)
            counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0  # FLOP counts do not depend on the kernel


def test_training_and_other_dtypes_keep_pytorchs_path() -> None:
    conv = use_onednn_for_cpu_inference(nn.Conv3d(4, 4, 3, padding=1))
    x = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
    assert _conv_kernels(conv, x) == {"aten::slow_conv3d_forward"}  # autograd on: nn.Conv3d's own choice
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    with torch.no_grad():
        assert _conv_kernels(conv.double(), torch.randn(1, 4, 8, 8, 8, dtype=torch.float64)) == {
            "aten::slow_conv3d_forward"}


def test_compiled_batch_one_inference_steps_aside() -> None:
    """``nnUNet_compile=t`` on the CPU: nnU-Net's predictor compiles the network; the oneDNN shortcut steps aside
    while inductor traces (it cannot run on fake tensors), and the compiled prediction is the eager one's."""
    from benchmark import make_predictor, plans_configuration

    from nnunet_hpn.nnunet.trainers import HPNTrainer

    torch.manual_seed(0)
    configuration = plans_configuration([8, 16, 16], 2, 4, 1, "unet")
    network = HPNTrainer.build_network_architecture(None, configuration, 2, 4, enable_deep_supervision=False).eval()
    assert any(type(m) is OneDNNConv3d for m in network.modules())
    case = torch.randn(2, 8, 24, 16)  # two tiles along y
    with torch.no_grad():
        eager = make_predictor(network, configuration, torch.device("cpu"), False).predict_sliding_window_return_logits(
            case)
        compiled = make_predictor(torch.compile(network), configuration, torch.device("cpu"), False)
        # the predictor accumulates the tiles in float16: agreement to its rounding
        torch.testing.assert_close(compiled.predict_sliding_window_return_logits(case), eager, rtol=4e-3, atol=4e-3)
