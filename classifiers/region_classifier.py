"""The region classifier: a GoogLeNet with C + 1 outputs (0 = background) scoring warped crops.

:class:`RegionClassifierConfig` is the ``classifier`` section of a run config: the network
options (passed to :class:`classifiers.inception.GoogLeNetConfig`), the crop geometry, and the
weights the trunk starts from. Training (:mod:`classifiers.train`) and scoring
(:mod:`classifiers.ensemble`) both build the network here, so a member checkpoint always
rebuilds the network it was trained as.

Labels: output ``k`` of the network is dataset class ``k - 1``; output 0 is background.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from classifiers.crops import context_padding
from classifiers.inception import GoogLeNet, GoogLeNetConfig
from classifiers.inception_weights import load_weights
from detection.core.checkpoints import CheckpointError, load_checkpoint
from detection.core.config_io import from_dict

__all__ = ["RegionClassifierConfig", "build_region_classifier", "load_member", "MEMBER_KIND"]

MEMBER_KIND = "region_classifier"


@dataclass
class RegionClassifierConfig:
    """Network and crop settings. The defaults are the paper's: 224 px crops, full width, no BN.

    Attributes:
        crop_size: side of the square each proposal is warped to.
        context_padding: pixels of context around the box in the warped crop (R-CNN: 16 at 224);
            None scales 16 with ``crop_size``.
        width, batch_norm, branch5x5, pooling, aux_logits, dropout, transform_input: see
            GoogLeNetConfig (``transform_input: true`` with torchvision's ImageNet weights).
        weights: where the trunk starts: None (random), "imagenet" (torchvision's file in the
            local torch cache; needs the torchvision layout) or a checkpoint path.
    """

    crop_size: int = 224
    context_padding: int | None = None
    width: float = 1.0
    batch_norm: bool = False
    branch5x5: Literal["5x5", "3x3"] = "5x5"
    pooling: Literal["paper", "torchvision"] = "paper"
    aux_logits: bool = True
    dropout: float = 0.4
    transform_input: bool = False
    weights: str | None = None

    def network_config(self, num_outputs: int) -> GoogLeNetConfig:
        """The GoogLeNetConfig of a classifier with ``num_outputs`` = classes + 1."""
        return GoogLeNetConfig(
            num_classes=num_outputs,
            input_size=self.crop_size,
            width=self.width,
            batch_norm=self.batch_norm,
            branch5x5=self.branch5x5,
            pooling=self.pooling,
            aux_logits=self.aux_logits,
            dropout=self.dropout,
            transform_input=self.transform_input,
        )

    def padding(self) -> int:
        return context_padding(self.crop_size, self.context_padding)

    def architecture(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be loaded into this network."""
        fields = dataclasses.asdict(self)
        fields.pop("weights")
        return fields


def build_region_classifier(config: RegionClassifierConfig, num_classes: int, init_weights: bool = True) -> GoogLeNet:
    """A GoogLeNet with ``num_classes + 1`` outputs; the trunk starts from ``config.weights``."""
    model = GoogLeNet(config.network_config(num_classes + 1))
    if init_weights and config.weights is not None:
        if config.weights == "imagenet":
            load_weights(model, "imagenet")
        else:
            load_weights(model, config.weights, ignore_classifier=True)
    return model


def load_member(path: str | Path, classes: list[str], device: torch.device | str = "cpu") -> tuple[GoogLeNet, RegionClassifierConfig, dict[str, Any]]:
    """Rebuild a trained member from its checkpoint, in eval mode on ``device``.

    Raises:
        detection.core.checkpoints.CheckpointError: another kind of checkpoint, another class list,
            or weights that do not fit the stored architecture; the message names the file.
    """
    payload = load_checkpoint(path, MEMBER_KIND, classes=classes, map_location="cpu")
    try:
        config = from_dict(RegionClassifierConfig, payload["config"]["classifier"], f"{path}:classifier")
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: its classifier config cannot be read ({error})") from None
    model = build_region_classifier(config, len(classes), init_weights=False)
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    # Members may be saved without their auxiliary heads (they are inference-only then).
    missing = [k for k in missing if not k.startswith(("aux1.", "aux2."))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the stored architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return model.to(device=device, memory_format=torch.channels_last), config, payload
