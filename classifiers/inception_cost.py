"""Parameters and multiply-adds of a GoogLeNet per stage of Table 1 (what the paper's table lists)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from classifiers.inception import GoogLeNet, GoogLeNetConfig

__all__ = ["StageCost", "count_params_and_macs", "forward_gflop", "training_gflop", "TRAINING_PASSES"]

# A training step costs about three forward passes: the forward, and a backward that computes
# gradients for both the inputs and the weights of every layer.
TRAINING_PASSES = 3


class StageCost(NamedTuple):
    """Parameters and multiply-adds (per image) of one Table 1 stage."""

    name: str
    params: int
    macs: int


def _stage_of(module_name: str) -> str | None:
    """Table 1 stage of a top-level module; None for pools, dropout and the auxiliary heads."""
    if module_name == "conv3":
        return "conv2"  # Table 1 counts the 1x1 reduce (conv2) and the 3x3 (conv3) as one row
    if module_name in ("conv1", "conv2", "fc") or module_name.startswith("inception"):
        return module_name
    return None


def _modules_by_stage(model: GoogLeNet) -> Iterator[tuple[str, nn.Module]]:
    for name, child in model.named_children():
        stage = _stage_of(name)
        if stage is not None:
            yield stage, child


def count_params_and_macs(
    model_or_config: GoogLeNet | GoogLeNetConfig, input_size: int | None = None
) -> list[StageCost]:
    """Parameters and multiply-adds per stage, in Table 1's order (auxiliary heads excluded).

    Stages: conv1, conv2 (the 1x1 reduce and the 3x3 together), inception3a .. inception5b, fc.
    Parameters are everything the stage holds (weights, biases, batch-norm affine terms);
    multiply-adds count convolutions (out_h * out_w * out_c * in_c / groups * kh * kw) and linear
    layers (in * out) for one image, measured with forward hooks. A config is built on the meta
    device, so counting costs no memory or arithmetic.

    Args:
        model_or_config: a model (counted as it is) or a config (built to count).
        input_size: side of the square input; the config's ``input_size`` when omitted.
    """
    if isinstance(model_or_config, GoogLeNetConfig):
        with torch.device("meta"):
            model = GoogLeNet(model_or_config)
    else:
        model = model_or_config
    size = input_size if input_size is not None else model.config.input_size

    params: dict[str, int] = {}
    macs: dict[str, int] = {}
    hooks = []

    def count(stage: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                per_output = module.in_channels // module.groups * kh * kw
                macs[stage] += output[0].numel() * per_output
            else:
                assert isinstance(module, nn.Linear)
                macs[stage] += module.in_features * module.out_features

        return hook

    for stage, child in _modules_by_stage(model):
        params[stage] = params.get(stage, 0) + sum(p.numel() for p in child.parameters())
        macs.setdefault(stage, 0)
        for m in child.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(count(stage)))

    reference = next(model.parameters())
    was_training = model.training
    try:
        model.eval()  # the auxiliary heads only run in training mode: keep them out of the count
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, dtype=reference.dtype, device=reference.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [StageCost(stage, params[stage], macs[stage]) for stage in params]


def forward_gflop(model_or_config: GoogLeNet | GoogLeNetConfig, input_size: int | None = None) -> float:
    """GFLOP of one image's forward pass over Table 1's stages (two FLOP per multiply-add)."""
    return 2 * sum(stage.macs for stage in count_params_and_macs(model_or_config, input_size)) / 1e9


def training_gflop(model_or_config: GoogLeNet | GoogLeNetConfig, input_size: int | None = None) -> float:
    """GFLOP of one image's training step: forward and backward, :data:`TRAINING_PASSES` forwards."""
    return TRAINING_PASSES * forward_gflop(model_or_config, input_size)
