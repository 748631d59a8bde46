"""GoogLeNet (Inception v1), built from Table 1 of "Going Deeper with Convolutions" (Szegedy et al., 2014).

The network is written down once, as data: :data:`TABLE1` lists the stem convolutions, the max
pools and the nine Inception modules top to bottom, with the channel columns of the paper's table
(#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj). :class:`GoogLeNet` walks that tuple to
build itself, so the code and the paper can be read side by side.

Two presets cover the two networks people mean by "GoogLeNet":

* :meth:`GoogLeNetConfig.paper` (the defaults): convolutions with bias and ReLU, no batch norm, a
  true 5x5 kernel in the "5x5" branch, 3x3/2 max pooling before 5a and 5x5/3 average pooling in
  the auxiliary heads, as the paper describes.
* :meth:`GoogLeNetConfig.torchvision`: the layout of ``torchvision.models.googlenet``, which the
  ported ImageNet weights need: conv (no bias) + batch norm (eps 0.001) + ReLU, a 3x3 kernel in
  the "5x5" branch (torchvision issue 906), a 2x2/2 max pool before 5a and adaptive 4x4 average
  pooling in the auxiliary heads. Its ``state_dict`` matches torchvision's key for key.

``width`` scales every channel count, for CPU-sized models; the input size is free (global
average pooling), e.g. 96 or 128 for small crops.

Shapes below use N for the batch, C for channels, and 224x224 inputs at width 1.0 unless said.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AUX_WEIGHT",
    "TABLE1",
    "ConvSpec",
    "PoolSpec",
    "InceptionSpec",
    "GoogLeNetConfig",
    "GoogLeNetOutputs",
    "ConvBlock",
    "Inception",
    "InceptionAux",
    "GoogLeNet",
    "googlenet_loss",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

logger = logging.getLogger(__name__)

#: Weight of each auxiliary classifier's loss during training (paper, section 5).
AUX_WEIGHT = 0.3


class ConvSpec(NamedTuple):
    """A stem convolution: Table 1's "convolution" rows."""

    name: str
    out_channels: int
    kernel_size: int
    stride: int
    padding: int


class PoolSpec(NamedTuple):
    """A max pool between stages: Table 1's "max pool" rows (all 3x3/2 in the paper)."""

    name: str
    kernel_size: int
    stride: int


class InceptionSpec(NamedTuple):
    """One Inception module: a row of Table 1's channel columns."""

    name: str
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        """Channels of the concatenated output: the four branch outputs side by side."""
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj


LayerSpec = Union[ConvSpec, PoolSpec, InceptionSpec]

# Table 1 top to bottom. The names are the module names, which are torchvision's, so a state_dict
# moves between the two; Table 1's second "convolution" row is two modules here, conv2 (its
# "#3x3 reduce" 1x1) and conv3 (the 3x3). Padding keeps the sizes of the table's "output" column;
# pools round up (ceil mode, as Caffe did), which is how 112 becomes 56 rather than 55.
TABLE1: tuple[LayerSpec, ...] = (
    ConvSpec("conv1", 64, kernel_size=7, stride=2, padding=3),
    PoolSpec("maxpool1", kernel_size=3, stride=2),
    ConvSpec("conv2", 64, kernel_size=1, stride=1, padding=0),
    ConvSpec("conv3", 192, kernel_size=3, stride=1, padding=1),
    PoolSpec("maxpool2", kernel_size=3, stride=2),
    #             name           #1x1 #3x3red #3x3 #5x5red #5x5 poolproj
    InceptionSpec("inception3a",   64,   96,   128,   16,    32,   32),
    InceptionSpec("inception3b",  128,  128,   192,   32,    96,   64),
    PoolSpec("maxpool3", kernel_size=3, stride=2),
    InceptionSpec("inception4a",  192,   96,   208,   16,    48,   64),
    InceptionSpec("inception4b",  160,  112,   224,   24,    64,   64),
    InceptionSpec("inception4c",  128,  128,   256,   24,    64,   64),
    InceptionSpec("inception4d",  112,  144,   288,   32,    64,   64),
    InceptionSpec("inception4e",  256,  160,   320,   32,   128,  128),
    PoolSpec("maxpool4", kernel_size=3, stride=2),
    InceptionSpec("inception5a",  256,  160,   320,   32,   128,  128),
    InceptionSpec("inception5b",  384,  192,   384,   48,   128,  128),
)  # fmt: skip

# Auxiliary classifiers (section 5): which module's output each one reads.
AUX_TAPS: dict[str, str] = {"inception4a": "aux1", "inception4d": "aux2"}
AUX_POOL_KERNEL, AUX_POOL_STRIDE = 5, 3
AUX_GRID = 4  # 14x14 maps pool to 4x4 (4x4x512 after 4a, 4x4x528 after 4d)
AUX_CONV_CHANNELS = 128
AUX_HIDDEN = 1024

# torchvision replaced the 3x3/2 pool before 5a with 2x2/2 (same 7x7 output at 224, other values);
# its ported weights were trained behind that pool.
TORCHVISION_POOL_KERNELS: dict[str, int] = {"maxpool4": 2}

#: ImageNet's per-channel RGB mean and standard deviation (pixels scaled to [0, 1]): every crop
#: and image the networks see is normalised with them. ``transform_input`` maps such an input to
#: the (x - 0.5) / 0.5 scaling the ported torchvision weights were trained on.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class GoogLeNetConfig:
    """Options of :class:`GoogLeNet`; the defaults are the paper's network.

    Attributes:
        num_classes: outputs of the final linear layer (and of the auxiliary heads).
        input_size: side of the square input the model is meant for; the network itself accepts
            any size (global average pooling), this is the default for cost counts and crops.
        width: multiplier on every channel count (rounded to the nearest integer, at least 1);
            1.0 is the paper.
        batch_norm: conv (no bias) + BatchNorm(eps=0.001) + ReLU like torchvision, instead of the
            paper's conv (with bias) + ReLU.
        branch5x5: kernel of the "5x5" branch: ``"5x5"`` (the paper) or ``"3x3"`` (torchvision).
        pooling: ``"paper"`` (3x3/2 max pool before 5a, 5x5/3 average pool in the auxiliary
            heads) or ``"torchvision"`` (2x2/2 before 5a, adaptive 4x4 in the auxiliary heads).
        aux_logits: build the auxiliary classifiers on 4a and 4d; they run in training mode only.
        aux_weight: weight of each auxiliary loss (for training code; see :func:`googlenet_loss`).
        dropout: dropout before the final linear layer (40% in the paper).
        dropout_aux: dropout in the auxiliary heads (70% in the paper).
        transform_input: rescale ImageNet-normalised inputs to the [-1, 1] scaling the ported
            torchvision weights expect.
    """

    num_classes: int = 1000
    input_size: int = 224
    width: float = 1.0
    batch_norm: bool = False
    branch5x5: Literal["5x5", "3x3"] = "5x5"
    pooling: Literal["paper", "torchvision"] = "paper"
    aux_logits: bool = True
    aux_weight: float = AUX_WEIGHT
    dropout: float = 0.4
    dropout_aux: float = 0.7
    transform_input: bool = False

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.input_size < 15:
            raise ValueError(f"input_size must be >= 15 (five stride-2 stages), got {self.input_size}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.branch5x5 not in ("5x5", "3x3"):
            raise ValueError(f"branch5x5 must be '5x5' or '3x3', got {self.branch5x5!r}")
        if self.pooling not in ("paper", "torchvision"):
            raise ValueError(f"pooling must be 'paper' or 'torchvision', got {self.pooling!r}")
        for name in ("dropout", "dropout_aux"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight}")

    @classmethod
    def paper(cls, **overrides: Any) -> GoogLeNetConfig:
        """The network of the paper's Table 1 (the defaults), with any field overridden."""
        return cls(**overrides)

    @classmethod
    def torchvision(cls, **overrides: Any) -> GoogLeNetConfig:
        """The layout of ``torchvision.models.googlenet`` (loads its weights), with overrides."""
        fields: dict[str, Any] = {"batch_norm": True, "branch5x5": "3x3", "pooling": "torchvision"}
        fields.update(overrides)
        return cls(**fields)

    def torchvision_mismatches(self) -> list[str]:
        """The options that keep torchvision's ImageNet weights from fitting; empty if none."""
        wanted = {"batch_norm": True, "branch5x5": "3x3", "pooling": "torchvision", "width": 1.0}
        return [f"{k}={getattr(self, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(self, k) != v]


class GoogLeNetOutputs(NamedTuple):
    """What a training-mode forward returns when the auxiliary heads exist.

    The field order is torchvision's, so training code written for it unpacks ours too.
    Each is (N, num_classes).
    """

    logits: Tensor
    aux_logits2: Tensor
    aux_logits1: Tensor


def _scaled(channels: int, width: float) -> int:
    # Round half up (not Python's round-half-even) so neighbouring widths scale predictably.
    return max(1, int(channels * width + 0.5))


def _scale_spec(spec: InceptionSpec, width: float) -> InceptionSpec:
    return InceptionSpec(spec.name, *(_scaled(c, width) for c in spec[1:]))


class ConvBlock(nn.Module):
    """Convolution + (optional batch norm) + ReLU: (N, C_in, H, W) -> (N, C_out, H', W').

    With batch norm the conv has no bias (the norm's shift replaces it) and eps is 0.001, as in
    torchvision's ``BasicConv2d``, whose submodule names (``conv``, ``bn``) are kept.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001) if batch_norm else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x)


class Inception(nn.Module):
    """One Inception module: four parallel branches concatenated along channels.

    (N, in_channels, H, W) -> (N, spec.out_channels, H, W). Branches as in the paper's Figure 2b:
    1x1; 1x1 reduce -> 3x3; 1x1 reduce -> 5x5 (or 3x3); 3x3/1 max pool -> 1x1 projection.
    """

    def __init__(self, in_channels: int, spec: InceptionSpec, kernel5x5: int = 5, batch_norm: bool = True) -> None:
        super().__init__()
        self.out_channels = spec.out_channels
        self.branch1 = ConvBlock(in_channels, spec.ch1x1, 1, batch_norm=batch_norm)
        self.branch2 = nn.Sequential(
            ConvBlock(in_channels, spec.ch3x3red, 1, batch_norm=batch_norm),
            ConvBlock(spec.ch3x3red, spec.ch3x3, 3, padding=1, batch_norm=batch_norm),
        )
        self.branch3 = nn.Sequential(
            ConvBlock(in_channels, spec.ch5x5red, 1, batch_norm=batch_norm),
            ConvBlock(spec.ch5x5red, spec.ch5x5, kernel5x5, padding=kernel5x5 // 2, batch_norm=batch_norm),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            ConvBlock(in_channels, spec.pool_proj, 1, batch_norm=batch_norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (section 5): (N, C, 14, 14) -> (N, num_classes).

    Average pool to a 4x4 grid, 1x1 conv (128), fully connected (1024) + ReLU, dropout, linear.
    ``paper_pool`` pools 5x5 with stride 3 as the paper does (exactly 4x4 from a 14x14 map); the
    result then goes through an adaptive 4x4 pool, a no-op at 224 that keeps the head working at
    other input sizes. Without it (torchvision) the adaptive pool alone is used.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv_channels: int = AUX_CONV_CHANNELS,
        hidden: int = AUX_HIDDEN,
        dropout: float = 0.7,
        batch_norm: bool = True,
        paper_pool: bool = True,
    ) -> None:
        super().__init__()
        self.paper_pool = paper_pool
        self.conv = ConvBlock(in_channels, conv_channels, 1, batch_norm=batch_norm)
        self.fc1 = nn.Linear(conv_channels * AUX_GRID * AUX_GRID, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.paper_pool and min(x.shape[-2:]) >= AUX_POOL_KERNEL:
            x = F.avg_pool2d(x, AUX_POOL_KERNEL, stride=AUX_POOL_STRIDE)
        x = F.adaptive_avg_pool2d(x, AUX_GRID)
        x = torch.flatten(self.conv(x), 1)  # flatten copies when channels_last; view would fail
        x = F.relu(self.fc1(x), inplace=True)
        return self.fc2(self.dropout(x))


class GoogLeNet(nn.Module):
    """GoogLeNet from :data:`TABLE1`; see :class:`GoogLeNetConfig` for the options.

    ``forward`` maps (N, 3, H, W) to logits (N, num_classes); in training mode with auxiliary
    heads it returns :class:`GoogLeNetOutputs` instead (the heads do not run in eval mode).
    :meth:`trunk` gives the last spatial map (N, num_features, H/32, W/32) for a MultiBox head and
    :meth:`features` the globally pooled (N, num_features) vector.

    Args:
        config: the options; ``GoogLeNetConfig()`` (the paper) when omitted.
        **overrides: fields of the config to replace, e.g. ``GoogLeNet(num_classes=21, width=0.25)``.
    """

    def __init__(self, config: GoogLeNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or GoogLeNetConfig(), **overrides)
        self.config = config
        bn = config.batch_norm
        kernel5x5 = 5 if config.branch5x5 == "5x5" else 3

        channels = 3
        channels_at: dict[str, int] = {}
        for spec in TABLE1:
            module: nn.Module
            if isinstance(spec, ConvSpec):
                out = _scaled(spec.out_channels, config.width)
                module = ConvBlock(channels, out, spec.kernel_size, spec.stride, spec.padding, batch_norm=bn)
                channels = out
            elif isinstance(spec, PoolSpec):
                kernel = spec.kernel_size
                if config.pooling == "torchvision":
                    kernel = TORCHVISION_POOL_KERNELS.get(spec.name, kernel)
                module = nn.MaxPool2d(kernel, stride=spec.stride, ceil_mode=True)
            else:
                module = Inception(channels, _scale_spec(spec, config.width), kernel5x5, batch_norm=bn)
                channels = module.out_channels
            self.add_module(spec.name, module)
            channels_at[spec.name] = channels
        self._trunk_names: tuple[str, ...] = tuple(spec.name for spec in TABLE1)

        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        if config.aux_logits:
            for tap, head in AUX_TAPS.items():
                aux = InceptionAux(
                    channels_at[tap],
                    config.num_classes,
                    conv_channels=_scaled(AUX_CONV_CHANNELS, config.width),
                    hidden=_scaled(AUX_HIDDEN, config.width),
                    dropout=config.dropout_aux,
                    batch_norm=bn,
                    paper_pool=config.pooling == "paper",
                )
                setattr(self, head, aux)

        self.num_features = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(channels, config.num_classes)
        self.reset_parameters()

    @property
    def has_aux(self) -> bool:
        """Whether the auxiliary heads exist (they still run only in training mode)."""
        return self.aux1 is not None

    def reset_parameters(self) -> None:
        """Random initialisation, driven by torch's global RNG.

        With batch norm: torchvision's scheme, weights ~ N(0, 0.01) and norms at identity; the
        norms make the scale of the weights irrelevant. (torchvision truncates at +-2, which is
        200 sigma away, so a plain normal draws the same distribution without the cost of
        torch's rejection sampler over 7M weights.) Without batch norm a fixed 0.01 would shrink
        activations ~10x per layer over 22 layers, so convolutions get Kaiming normal (fan-in,
        ReLU gain), which keeps their scale; linear layers the same N(0, 0.01).
        Biases start at zero.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not self.config.batch_norm:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                continue
            else:
                continue
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: Tensor) -> Tensor:
        if not self.config.transform_input:
            return x
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        # (x * std + mean) undoes ImageNet normalisation; then rescale [0, 1] to [-1, 1].
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _run_trunk(self, x: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        """(N, 3, H, W) -> ((N, num_features, H/32, W/32), [aux1 logits, aux2 logits] or [])."""
        x = self._transform_input(x)
        aux_outputs: list[Tensor] = []
        for name in self._trunk_names:
            x = self._modules[name](x)  # type: ignore[misc]
            if with_aux and name in AUX_TAPS:
                aux_outputs.append(self._modules[AUX_TAPS[name]](x))  # type: ignore[misc]
        return x, aux_outputs

    def trunk(self, x: Tensor) -> Tensor:
        """The last spatial feature map, before global pooling.

        (N, 3, H, W) -> (N, num_features, ceil(H/32), ceil(W/32)); (N, 1024, 7, 7) at 224.
        """
        return self._run_trunk(x, with_aux=False)[0]

    def features(self, x: Tensor) -> Tensor:
        """The globally pooled features the classifier reads: (N, 3, H, W) -> (N, num_features)."""
        return torch.flatten(self.avgpool(self.trunk(x)), 1)

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the pooled features they are computed from, in one pass.

        (N, 3, H, W) -> (logits (N, num_classes), features (N, num_features)). The features are
        the final linear layer's input after global average pooling, before dropout, so a
        box regressor reads what the classifier reads; in eval mode the logits equal
        ``forward``'s. The auxiliary heads never run here.
        """
        features = torch.flatten(self.avgpool(self.trunk(x)), 1)
        return self.fc(self.dropout(features)), features

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        """(N, 3, H, W) -> logits (N, num_classes), or :class:`GoogLeNetOutputs` when training with aux."""
        with_aux = self.training and self.has_aux
        x, aux_outputs = self._run_trunk(x, with_aux)
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if with_aux:
            aux1, aux2 = aux_outputs
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits



def googlenet_loss(
    outputs: Tensor | GoogLeNetOutputs, targets: Tensor, aux_weight: float = AUX_WEIGHT
) -> Tensor:
    """Cross-entropy of the main logits plus ``aux_weight`` times each auxiliary cross-entropy.

    Args:
        outputs: logits (N, num_classes), or the training-mode :class:`GoogLeNetOutputs`.
        targets: class indices (N,).
        aux_weight: 0.3 in the paper; the auxiliary losses are added, not averaged in.

    Returns:
        A scalar tensor.
    """
    if isinstance(outputs, Tensor):
        return F.cross_entropy(outputs, targets)
    loss = F.cross_entropy(outputs.logits, targets)
    for aux in (outputs.aux_logits1, outputs.aux_logits2):
        if aux is not None:
            loss = loss + aux_weight * F.cross_entropy(aux, targets)
    return loss
