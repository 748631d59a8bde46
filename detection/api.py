"""The Python API: a trained run directory as a detector for single images.

    from detection.api import Detector

    detector = Detector.from_run("runs/demo")
    result = detector("photo.jpg")          # or a uint8 RGB (H, W, 3) array
    for box, label, score in zip(result.boxes, result.labels, result.scores):
        print(label, round(score, 2), box)

Proposals are computed on the fly with the run's settings (Selective Search and, when the run
used it, its MultiBox network); crops are scored by the run's members and turned into
detections exactly as ``rcnn detect`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from classifiers.ensemble import Ensemble, member_paths, parse_members
from classifiers.region_classifier import MEMBER_KIND
from detection.config import Config
from detection.core.checkpoints import load_checkpoint
from detection.core.config_io import from_dict
from detection.data.images import read_image
from detection.pipeline import image_detections
from proposals.multibox import MultiBoxProposer
from proposals.propose import proposals_for_image

__all__ = ["Detector", "DetectionResult"]


@dataclass
class DetectionResult:
    """Detections of one image: ``boxes (D, 4)`` (x1, y1, x2, y2 pixels), ``labels (D,)`` class
    names, ``scores (D,)``, highest score first."""

    boxes: np.ndarray
    labels: list[str]
    scores: np.ndarray


class Detector:
    """Proposals, ensemble scoring and per-class NMS for one image at a time."""

    def __init__(self, config, ensemble, multibox=None) -> None:  # noqa: ANN001
        self.config = config
        self.ensemble = ensemble
        self.multibox = multibox

    @classmethod
    def from_run(cls, run_dir: str | Path, members: str | Sequence[int] = "all", device: str = "auto") -> Detector:
        """Load the config, members and MultiBox network a ``rcnn bench detection`` run left.

        ``members``: member indices, or a ``--members`` string (``all``, a count, ``0,2,5``).
        """
        run_dir = Path(run_dir)
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{run_dir}: no config.yaml; is this a run directory of rcnn bench detection?")
        config = from_dict(Config, yaml.safe_load(config_path.read_text()) or {}, str(config_path))
        paths = member_paths(run_dir / "members")
        classes = load_checkpoint(next(iter(paths.values())), MEMBER_KIND)["classes"]
        regression = config.box_regression.enabled
        chosen = parse_members(members, list(paths)) if isinstance(members, str) else list(members)
        ensemble = Ensemble.from_dir(run_dir / "members", classes, chosen, device, config.detection.memory_budget_mb, box_regression=regression)
        multibox = None
        if config.proposals.method in ("multibox", "merged"):
            checkpoint = config.proposals.multibox_checkpoint or str(run_dir / "multibox" / "multibox.pt")
            multibox = MultiBoxProposer.from_checkpoint(checkpoint, device=device, top_k=config.proposals.top_k)
            config = dataclasses.replace(config, proposals=dataclasses.replace(config.proposals, multibox_checkpoint=checkpoint))
        return cls(config, ensemble, multibox)

    @property
    def classes(self) -> list[str]:
        return self.ensemble.classes

    def __call__(self, image: np.ndarray | str | Path) -> DetectionResult:
        """Detect objects in a uint8 RGB ``(H, W, 3)`` array or an image file."""
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        proposals = proposals_for_image("image", image, self.config.proposals, self.multibox)
        # With box regression (when the run used it) the members' mean deltas move each class's boxes.
        regression = self.ensemble.regressors is not None
        scores = self.ensemble.score([image], [proposals.boxes], deltas=regression)[0]
        probabilities = scores.probabilities.numpy().mean(axis=0)
        if regression:
            mean_deltas = scores.deltas.numpy().astype(np.float32).mean(axis=0)  # type: ignore[union-attr]
            detections = image_detections("image", proposals.boxes, probabilities, self.config.detection, mean_deltas, image.shape[:2])
        else:
            detections = image_detections("image", proposals.boxes, probabilities, self.config.detection)
        order = np.argsort(-detections.scores, kind="stable")
        return DetectionResult(detections.boxes[order], [self.classes[k] for k in detections.labels[order]], detections.scores[order])
