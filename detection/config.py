"""Configuration: dataclasses filled from YAML, strict about unknown keys and wrong types.

A config file maps section names to the fields of :class:`Config`'s sections::

    data:
      train: synthetic:120:0
      test: synthetic:40:1
    evaluation:
      protocol: ilsvrc

Each stage keeps its section's dataclass beside its code (``proposals`` in
:mod:`proposals.propose`, ``multibox`` in :mod:`proposals.multibox`, ``classifier`` in
:mod:`classifiers.region_classifier`, ``train`` in :mod:`classifiers.train`, ``box_regression``
in :mod:`classifiers.box_regression`, ``detection`` in :mod:`detection.pipeline`); this module
gathers them. Unknown keys and values of the wrong type
are errors naming the file and the key (:mod:`detection.core.config_io`). Command lines override
single values with ``--set section.key=value`` (the value is parsed as YAML, so
``--set evaluation.iou=0.7`` gives a float). Only ``yaml.safe_load`` is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from classifiers.box_regression import BoxRegressionConfig
from classifiers.region_classifier import RegionClassifierConfig
from classifiers.train import TrainConfig
from detection.core.config_io import ConfigError, apply_overrides, from_dict, to_dict
from detection.pipeline import DetectConfig
from proposals.multibox import MultiBoxConfig
from proposals.propose import ProposalConfig

__all__ = ["ConfigError", "DataConfig", "EvaluationConfig", "BenchConfig", "Config", "load_config", "from_dict", "apply_overrides", "to_dict"]

T = TypeVar("T")


@dataclass
class DataConfig:
    """Which data each stage reads (dataset specs, see :mod:`detection.data.datasets`)."""

    train: str = "synthetic:120:0"
    test: str = "synthetic:40:1"


@dataclass
class EvaluationConfig:
    protocol: Literal["ilsvrc", "voc07", "voc12", "coco50"] = "ilsvrc"
    iou: float = 0.5
    max_dets: int = 100


@dataclass
class ExternalResult:
    """A published result on the same test split, printed in the report as a row marked external
    (not run here): mAP@0.5 and AP per class name, with where the figures come from."""

    name: str
    map: float
    per_class: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        values = [self.map, *self.per_class.values()]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in values):
            raise ConfigError(f"external result '{self.name}': mAP and per-class AP must be numbers in [0, 1]")


@dataclass
class BenchConfig:
    """The ``bench`` section: what the benchmark report adds on top of the pipeline."""

    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    max_subsets: int = 20
    gallery_images: int = 6
    workers: int = 1
    references: list[ExternalResult] = field(default_factory=list)


@dataclass
class Config:
    """The whole configuration of a run; each pipeline stage reads its own section."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    multibox: MultiBoxConfig = field(default_factory=MultiBoxConfig)
    classifier: RegionClassifierConfig = field(default_factory=RegionClassifierConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    box_regression: BoxRegressionConfig = field(default_factory=BoxRegressionConfig)
    detection: DetectConfig = field(default_factory=DetectConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type[T] | None = None) -> T:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    values: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: malformed YAML ({error})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        values = loaded or {}
    values = apply_overrides(values, overrides or [])
    return from_dict(cls or Config, values, where)  # type: ignore[return-value]
