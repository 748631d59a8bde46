"""GoogLeNet weight files: torchvision's ImageNet file or any state dict, checked key by key.

:func:`load_weights` fills a :class:`classifiers.inception.GoogLeNet` from a file (or
``"imagenet"``: torchvision's IMAGENET1K_V1 file in the torch hub cache, which nothing here
downloads), optionally leaving the class-dependent layers as they are, and names every key that
is missing, unexpected or of the wrong shape.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from classifiers.inception import GoogLeNet

__all__ = ["imagenet_weights_path", "load_weights"]

logger = logging.getLogger(__name__)


def imagenet_weights_path() -> Path:
    """Where torchvision keeps the IMAGENET1K_V1 GoogLeNet file: ``<torch hub dir>/checkpoints/``.

    The hub directory is ``$TORCH_HOME/hub`` (``~/.cache/torch/hub`` by default) unless
    ``torch.hub.set_dir`` moved it.
    """
    from torchvision.models import GoogLeNet_Weights  # torchvision.models loads slowly; only to name the file

    filename = os.path.basename(urlparse(GoogLeNet_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _is_classifier_key(key: str) -> bool:
    """Keys whose shapes depend on num_classes: the final linear layer and the aux heads' last."""
    return key.startswith(("fc.", "aux1.fc2.", "aux2.fc2."))


def _strip_wrapper_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # DistributedDataParallel saves "module.*", torch.compile "_orig_mod.*": the same weights.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state_dict from a file: raw, or under "model" / "state_dict" in a checkpoint dict."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"cannot read weights from {path}: {e}") from e
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{path} holds neither a state_dict nor a checkpoint dict with a 'model' or 'state_dict' entry"
        )
    return _strip_wrapper_prefix(dict(obj))


def _few(items: list[str], n: int = 5) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _load_state_checked(model: GoogLeNet, state: dict[str, Tensor], skip: Callable[[str], bool], source: str) -> None:
    """Load ``state`` into ``model``, every key and shape matching except those ``skip`` names.

    Auxiliary-head weights in the file are dropped when the model has no heads (the paper
    removes them at inference); anything else missing, extra or misshapen is a ValueError.
    """
    own = model.state_dict()
    if not model.has_aux:
        dropped = [k for k in state if k.startswith(("aux1.", "aux2.")) and k not in own]
        if dropped:
            logger.debug("%s: ignoring %d auxiliary-head tensors (model has no aux heads)", source, len(dropped))
        state = {k: v for k, v in state.items() if k not in dropped}
    state = {k: v for k, v in state.items() if not skip(k)}
    missing = [k for k in own if k not in state and not skip(k)]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or misshapen:
        parts = [
            f"{label}: {_few(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshapen))
            if items
        ]
        raise ValueError(f"weights from {source} do not fit this GoogLeNet ({model.config}); " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def load_weights(
    model: GoogLeNet, weights: str | os.PathLike[str] | None, *, ignore_classifier: bool = False
) -> GoogLeNet:
    """Initialise or load ``model``'s weights in place; returns the model.

    Args:
        model: the network.
        weights: ``None``: fresh random initialisation (:meth:`GoogLeNet.reset_parameters`).
            ``"imagenet"``: torchvision's IMAGENET1K_V1 file from the local torch hub cache (see
            :func:`imagenet_weights_path`), never downloaded; needs the torchvision layout
            (:meth:`GoogLeNetConfig.torchvision`). With num_classes != 1000 the classifier layers
            keep their random weights. Anything else: a file written by ``torch.save``, read with
            ``weights_only=True``, holding a state_dict or a dict with it under "model" or
            "state_dict".
        ignore_classifier: for a file, skip the num_classes-dependent layers (``fc`` and the aux
            heads' ``fc2``), e.g. to fine-tune a classification checkpoint for detection.

    Raises:
        FileNotFoundError: the file (or the cached ImageNet file) is absent; the message names it.
        ValueError: options that cannot take ImageNet weights, an unreadable file, or keys and
            shapes that do not match (a few are listed).
    """
    if weights is None:
        model.reset_parameters()
        return model
    if isinstance(weights, str) and weights == "imagenet":
        return _load_imagenet(model)
    path = Path(weights)
    _load_state_checked(model, _read_state_dict(path), lambda k: ignore_classifier and _is_classifier_key(k), str(path))
    logger.info("loaded GoogLeNet weights from %s%s", path, " (classifier skipped)" if ignore_classifier else "")
    return model


def _load_imagenet(model: GoogLeNet) -> GoogLeNet:
    """:func:`load_weights` with ``"imagenet"``: torchvision's file from the hub cache, checked."""
    mismatches = model.config.torchvision_mismatches()
    if mismatches:
        raise ValueError(
            "torchvision's ImageNet weights need the torchvision layout "
            f"(GoogLeNetConfig.torchvision()); this model has {', '.join(mismatches)}"
        )
    path = imagenet_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet GoogLeNet weights not found at {path}. Nothing is downloaded here: on a machine "
            "with internet access run `python -c \"import torchvision; "
            "torchvision.models.googlenet(weights='IMAGENET1K_V1')\"` and copy "
            f"$TORCH_HOME/hub/checkpoints/{path.name} (~/.cache/torch/hub/checkpoints/ by default) to {path}, "
            "or point TORCH_HOME at a directory that has hub/checkpoints/" + path.name
        )
    replace_classifier = model.config.num_classes != 1000
    if replace_classifier:
        logger.info(
            "ImageNet weights: loading all but fc and the aux heads' fc2 (num_classes=%d, not 1000); "
            "those keep their random initialisation",
            model.config.num_classes,
        )
    if model.has_aux and not replace_classifier:
        logger.warning("the auxiliary heads in torchvision's ImageNet file are not trained: train them before use")
    if not model.config.transform_input:
        logger.warning(
            "ImageNet GoogLeNet weights expect inputs scaled to [-1, 1]; torchvision sets "
            "transform_input=True to feed them ImageNet-normalised images, this model has it off"
        )
    _load_state_checked(model, _read_state_dict(path), lambda k: replace_classifier and _is_classifier_key(k), str(path))
    logger.info("loaded ImageNet GoogLeNet weights from %s", path)
    return model
