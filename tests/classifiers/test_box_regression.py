"""classifiers.box_regression: R-CNN targets, ridge fits, files, and the detection path with deltas.

Small hand-worked cases first; then tiny untrained members (width 1/8, 32 px crops, one thread)
fitted and scored through the real files (member checkpoints, proposal stores, score cache).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from classifiers.box_regression import (
    BBOX_XFORM_CLIP,
    BoxRegressionConfig,
    BoxRegressor,
    apply_deltas,
    fit_box_regressor,
    fit_ridge,
    load_box_regressor,
    regression_targets,
    save_box_regressor,
)
from classifiers.box_regression_train import fit_box_regressors, match_proposals, regression_samples
from classifiers.ensemble import Ensemble
from classifiers.region_classifier import MEMBER_KIND, RegionClassifierConfig, build_region_classifier
from detection.config import ConfigError, load_config
from detection.core.atomic import file_digest
from detection.core.boxes import box_iou_numpy
from detection.core.checkpoints import CheckpointError, save_checkpoint
from detection.core.config_io import to_dict
from detection.data.datasets import load_dataset
from detection.data.records import Dataset, ImageRecord
from detection.pipeline import DetectConfig, detections_from_scores, fill_score_cache, image_detections, load_member_scores
from proposals.store import ImageProposals, ProposalStore
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- targets and deltas


def test_targets_hand_worked_and_round_trip() -> None:
    proposals = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 25.0, 15.0]])
    gt = torch.tensor([[2.0, 4.0, 12.0, 24.0], [0.0, 0.0, 30.0, 30.0]])
    targets = regression_targets(proposals, gt)
    # Box 0: centre (5, 10) -> (7, 14) over (10, 20): 0.2, 0.2, same size. Box 1: centre (15, 10)
    # -> (15, 15), height 10 -> 30, width 20 -> 30.
    expected = torch.tensor([[0.2, 0.2, 0.0, 0.0], [0.0, 0.5, math.log(1.5), math.log(3.0)]])
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(apply_deltas(proposals, targets), gt)
    # Random boxes both ways, and empty input.
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 200, (50, 2))
    boxes_p = torch.tensor(np.hstack([corners, corners + rng.uniform(2, 100, (50, 2))]), dtype=torch.float32)
    shifted = corners + rng.uniform(-10, 10, (50, 2))
    boxes_g = torch.tensor(np.hstack([shifted, shifted + rng.uniform(2, 100, (50, 2))]), dtype=torch.float32)
    torch.testing.assert_close(apply_deltas(boxes_p, regression_targets(boxes_p, boxes_g)), boxes_g, atol=1e-3, rtol=1e-5)
    assert apply_deltas(torch.zeros((0, 4)), torch.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        regression_targets(proposals, gt[:1])


def test_apply_deltas_clips_the_scale_and_to_the_image() -> None:
    box = torch.tensor([[40.0, 40.0, 60.0, 50.0]])  # 20 x 10, centre (50, 45)
    huge = apply_deltas(box, torch.tensor([[0.0, 0.0, 50.0, 50.0]]))
    # exp(50) would be 5e21; clipped at log(1000 / 16) the box grows 62.5x.
    torch.testing.assert_close(huge[0, 2] - huge[0, 0], torch.tensor(20.0 * math.exp(BBOX_XFORM_CLIP)))
    torch.testing.assert_close(huge[0, 2] - huge[0, 0], torch.tensor(1250.0))
    # Shrinking is not clipped (nothing overflows), and clipping to a 100 x 80 (h x w) image.
    torch.testing.assert_close(apply_deltas(box, torch.tensor([[0.0, 0.0, -math.log(2), 0.0]])), torch.tensor([[45.0, 40.0, 55.0, 50.0]]))
    clipped = apply_deltas(box, torch.tensor([[2.0, -5.0, 0.0, 0.0]]), image_size=(100, 80))
    torch.testing.assert_close(clipped, torch.tensor([[80.0, 0.0, 80.0, 0.0]]))
    inside = apply_deltas(box, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), image_size=(100, 80))
    assert float(inside[:, 0::2].min()) >= 0 and float(inside[:, 0::2].max()) <= 80 and float(inside[:, 1::2].max()) <= 100


# ----------------------------------------------------------------------------- the fit


def test_ridge_recovers_a_known_linear_map_on_raw_features() -> None:
    g = torch.Generator().manual_seed(0)
    # Dimensions on scales from 0.1 to 10 with offsets: the standardisation is folded back.
    features = torch.randn(400, 8, generator=g) * torch.linspace(0.1, 10.0, 8) + 3.0
    weight, bias = torch.randn(8, 4, generator=g), torch.randn(4, generator=g)
    fitted_weight, fitted_bias = fit_ridge(features, features @ weight + bias, ridge_lambda=1e-6)
    torch.testing.assert_close(fitted_weight, weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted_bias, bias, atol=1e-3, rtol=1e-4)
    # A huge penalty leaves the unpenalised intercept: every prediction is the mean target.
    flat_weight, flat_bias = fit_ridge(features, features @ weight + bias, ridge_lambda=1e12)
    assert flat_weight.abs().max() < 1e-6
    torch.testing.assert_close(flat_bias, (features @ weight + bias).mean(0), atol=1e-3, rtol=1e-4)


def test_ridge_dual_form_equals_the_primal_formula() -> None:
    """N < D takes the N x N system; it must equal ridge on standardised features done by hand."""
    g = torch.Generator().manual_seed(1)
    features, targets = torch.randn(20, 50, generator=g) * 2 + 1, torch.randn(20, 4, generator=g)
    features[:, 7] = 5.0  # a dead channel: constant, so weight 0
    weight, bias = fit_ridge(features, targets, ridge_lambda=3.0)
    x = features.double()
    mean, std = x.mean(0), x.std(0, correction=0)
    std[7] = 1.0
    z = (x - mean) / std
    centred = targets.double() - targets.double().mean(0)
    expected = torch.linalg.solve(z.T @ z + 3.0 * torch.eye(50, dtype=torch.float64), z.T @ centred) / std[:, None]
    torch.testing.assert_close(weight.double(), expected, atol=1e-6, rtol=1e-5)
    assert weight[7].abs().max() == 0
    torch.testing.assert_close((features @ weight + bias).double().mean(0), targets.double().mean(0), atol=1e-5, rtol=1e-5)


def test_fit_per_class_with_identity_for_rare_classes(caplog: pytest.LogCaptureFixture) -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.randn(90, 6, generator=g)
    maps = torch.randn(3, 6, 4, generator=g)
    labels = torch.tensor([0] * 50 + [2] * 37 + [1] * 3)
    targets = torch.einsum("nd,ndk->nk", features, maps[labels])
    with caplog.at_level(logging.WARNING):
        regressor = fit_box_regressor(features, targets, labels, 3, ridge_lambda=1e-6, min_samples=10, class_names=["cat", "dog", "cow"])
    assert regressor.weight.shape == (3, 6, 4) and regressor.bias.shape == (3, 4)
    assert regressor.num_samples.tolist() == [50, 3, 37]
    torch.testing.assert_close(regressor.weight[0], maps[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(regressor.weight[2], maps[2], atol=1e-4, rtol=1e-4)
    assert regressor.weight[1].abs().max() == 0 and regressor.bias[1].abs().max() == 0
    assert "class dog: too few samples" in caplog.text and "x1" in caplog.text  # the counted summary
    deltas = regressor.predict(features[:5])
    assert deltas.shape == (5, 3, 4) and deltas[:, 1].abs().max() == 0
    with pytest.raises(ValueError, match="labels must lie"):
        fit_box_regressor(features, targets, labels + 1, 3)


def test_config_is_off_by_default_strict_and_checked() -> None:
    assert not load_config(None).box_regression.enabled
    assert not load_config(REPO / "configs" / "ilsvrc14_googlenet.yaml").box_regression.enabled
    config = load_config(None, ["box_regression.enabled=true", "box_regression.ridge_lambda=10"])
    assert config.box_regression.enabled and config.box_regression.ridge_lambda == 10.0
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["box_regression.lambda=1"])
    with pytest.raises(ConfigError, match="ridge_lambda must be > 0"):
        load_config(None, ["box_regression.ridge_lambda=0"])
    with pytest.raises(ValueError, match="min_samples_per_class"):
        BoxRegressionConfig(min_samples_per_class=20, max_samples_per_class=10)


# ----------------------------------------------------------------------------- samples


def test_samples_are_windows_at_fg_iou_matched_to_their_box() -> None:
    record = ImageRecord(
        "a", None, 100, 100,
        boxes=np.array([[10, 10, 50, 50], [60, 60, 90, 90], [0, 0, 100, 100], [5, 5, 5, 30]], np.float32),
        labels=np.array([0, 1, 1, 0]),
        crowd=np.array([False, False, True, False]),  # a crowd region is never a target; nor a zero-width box
    )
    proposals = np.array([[12, 12, 50, 50], [10, 10, 30, 30], [60, 62, 90, 92], [0, 0, 100, 100]], np.float32)
    windows, matched, labels = match_proposals(record, proposals, fg_iou=0.6)
    # IoUs: 0.9025 (box 0), 0.25 (no), 0.875 (box 1), crowd only (no); then the two usable boxes themselves.
    np.testing.assert_array_equal(windows, np.array([[12, 12, 50, 50], [60, 62, 90, 92], [10, 10, 50, 50], [60, 60, 90, 90]], np.float32))
    np.testing.assert_array_equal(matched, record.boxes[[0, 1, 0, 1]])
    np.testing.assert_array_equal(labels, [0, 1, 0, 1])
    assert len(match_proposals(record, proposals, fg_iou=0.95)[0]) == 2  # the ground truth alone

    dataset = Dataset("hand", ["a", "b"], [record, ImageRecord("b", None, 50, 50, boxes=np.array([[0, 0, 20, 20]]), labels=np.array([0]))], lambda r: np.zeros((r.height, r.width, 3), np.uint8))
    items = {"a": ImageProposals("a", proposals, np.ones(4, np.float32), np.zeros(4, np.uint8))}  # "b" has none stored
    samples = regression_samples(dataset, items, fg_iou=0.6)
    np.testing.assert_array_equal(samples.image_indices, [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(samples.labels, [0, 1, 0, 1, 0])
    capped = regression_samples(dataset, items, fg_iou=0.6, max_per_class=2, seed=0)
    assert np.bincount(capped.labels).tolist() == [2, 2] and np.all(np.diff(capped.image_indices) >= 0)
    np.testing.assert_array_equal(capped.labels, regression_samples(dataset, items, fg_iou=0.6, max_per_class=2, seed=0).labels)
    torch.testing.assert_close(samples.targets()[2], torch.zeros(4))  # a ground-truth box targets itself


# ----------------------------------------------------------------------------- files


def _regressor(classes: int = 2, dim: int = 3) -> BoxRegressor:
    g = torch.Generator().manual_seed(3)
    return BoxRegressor(torch.randn(classes, dim, 4, generator=g), torch.randn(classes, 4, generator=g), torch.tensor([20] * classes))


def test_save_load_and_refusals(tmp_path: Path) -> None:
    regressor = _regressor()
    identity = {"box_regression": BoxRegressionConfig().identity(), "member": {"index": 0, "checkpoint": "abc"}, "data": {"fingerprint": "f"}}
    path = save_box_regressor(tmp_path / "box_regressor0.pt", regressor, identity, ["cat", "dog"])
    loaded = load_box_regressor(path, ["cat", "dog"], member=0, member_digest="abc")
    for name in ("weight", "bias", "num_samples"):
        torch.testing.assert_close(getattr(loaded, name), getattr(regressor, name))
    with pytest.raises(CheckpointError, match="box regressor of member 0, not of member 1"):
        load_box_regressor(path, ["cat", "dog"], member=1)
    with pytest.raises(CheckpointError, match="trained for classes"):
        load_box_regressor(path, ["dog", "cat"], member=0)
    with pytest.raises(CheckpointError, match="another version of member 0"):
        load_box_regressor(path, ["cat", "dog"], member=0, member_digest="def")
    member = tmp_path / "member0.pt"
    save_checkpoint(member, MEMBER_KIND, {}, ["cat", "dog"], {})
    with pytest.raises(CheckpointError, match="is a region_classifier checkpoint, expected box_regressor"):
        load_box_regressor(member, ["cat", "dog"])
    with pytest.raises(ValueError, match="weight \\(C, D, 4\\)"):
        BoxRegressor(torch.zeros(2, 3, 5), torch.zeros(2, 4), torch.zeros(2))


# ----------------------------------------------------------------------------- network and detections


def test_boxes_move_before_the_per_class_nms() -> None:
    """Two proposals barely overlap (both survive NMS); their deltas put both on one box, so NMS
    after regression keeps one, at the regressed place. Another class is left where it was."""
    boxes = np.array([[0, 0, 20, 20], [16, 0, 36, 20]], np.float32)
    probabilities = np.array([[0.1, 0.9, 0.0], [0.2, 0.8, 0.5]], np.float32)  # background, class 0, class 1
    config = DetectConfig(nms_iou=0.3, score_threshold=0.3)
    plain = image_detections("img", boxes, probabilities, config)
    assert sorted(plain.labels.tolist()) == [0, 0, 1]
    target = torch.tensor([[8.0, 0.0, 28.0, 20.0]])
    deltas = np.zeros((2, 2, 4), np.float32)
    deltas[:, 0] = regression_targets(torch.from_numpy(boxes), target.expand(2, 4)).numpy()
    moved = image_detections("img", boxes, probabilities, config, deltas, image_size=(20, 30))
    assert sorted(moved.labels.tolist()) == [0, 1]
    np.testing.assert_allclose(moved.boxes[moved.labels == 0], [[8, 0, 28, 20]], atol=1e-5)
    np.testing.assert_allclose(moved.scores[moved.labels == 0], [0.9])
    np.testing.assert_allclose(moved.boxes[moved.labels == 1], [[16, 0, 30, 20]])  # zero deltas, clipped to width 30


# ----------------------------------------------------------------------------- members, files, score cache

# No batch norm: untrained, its eval-mode statistics (0, 1) would shrink the activations to nothing;
# Kaiming-initialised convolutions keep their scale, so the features vary from window to window.
CLASSIFIER = RegionClassifierConfig(crop_size=32, width=0.125, batch_norm=False, aux_logits=False)


class Fitted(NamedTuple):
    root: Path
    train: Dataset
    test: Dataset
    members: Path
    config: BoxRegressionConfig
    paths: list[Path]


def _jittered_store(directory: Path, dataset: Dataset, seed: int) -> Path:
    """A proposal store of ground-truth boxes jittered by up to 15% of their size, plus random boxes."""

    def compute(index: int) -> ImageProposals:
        record = dataset[index]
        rng = np.random.default_rng([seed, index])
        gt = np.repeat(record.boxes, 3, axis=0)
        size = np.repeat(record.boxes[:, 2:] - record.boxes[:, :2], 2, axis=1).repeat(3, axis=0)
        jittered = gt + rng.uniform(-0.15, 0.15, gt.shape) * size
        corner = rng.uniform(0, min(record.width, record.height) / 2, (4, 2))
        boxes = np.vstack([jittered, np.hstack([corner, corner + rng.uniform(4, 20, (4, 2))])]).astype(np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, record.width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, record.height)
        return ImageProposals(record.image_id, boxes, np.ones(len(boxes), np.float32), np.zeros(len(boxes), np.uint8))

    store = ProposalStore(directory, dataset, "jitter", {"seed": seed}, chunk_size=4)
    store.fill(compute)
    return directory


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    """Two untrained members (different seeds) and their regressors fitted on jittered windows."""
    root = tmp_path_factory.mktemp("box_regression")
    train, test = load_dataset("synthetic:6:0"), load_dataset("synthetic:3:1")
    _jittered_store(root / "proposals_train", train, 0)
    _jittered_store(root / "proposals_test", test, 1)
    members = root / "members"
    for member in range(2):
        torch.manual_seed(member)
        model = build_region_classifier(CLASSIFIER, train.num_classes)
        save_checkpoint(members / f"member{member}.pt", MEMBER_KIND, {"classifier": to_dict(CLASSIFIER)}, train.classes, model.state_dict())
    # A small penalty on ~30 samples of 128-d features: each class's training windows are fitted almost exactly.
    config = BoxRegressionConfig(enabled=True, ridge_lambda=1e-3, max_samples_per_class=30, min_samples_per_class=2)
    proposals = ProposalStore.open(root / "proposals_train", train).load_all()
    paths = fit_box_regressors(train, proposals, config, members, device="cpu", progress=False)
    return Fitted(root, train, test, members, config, paths)


def test_fitted_regressors_move_training_windows_onto_their_boxes(fitted: Fitted) -> None:
    assert [p.name for p in fitted.paths] == ["box_regressor0.pt", "box_regressor1.pt"]
    proposals = ProposalStore.open(fitted.root / "proposals_train", fitted.train).load_all()
    samples = regression_samples(fitted.train, proposals, fitted.config.fg_iou, fitted.config.max_samples_per_class, fitted.config.seed)
    ensemble = Ensemble.from_dir(fitted.members, fitted.train.classes, [0], "cpu", box_regression=True)
    images = [fitted.train.load_image(int(i)) for i in np.unique(samples.image_indices)]
    per_image = [samples.boxes[samples.image_indices == i] for i in np.unique(samples.image_indices)]
    deltas = torch.cat([scores.deltas for scores in ensemble.score(images, per_image, deltas=True)], dim=1)
    own_class = deltas[0, torch.arange(len(samples)), torch.from_numpy(samples.labels)]
    moved = apply_deltas(torch.from_numpy(samples.boxes), own_class).numpy()
    before = np.diag(box_iou_numpy(samples.boxes, samples.gt_boxes)).mean()
    after = np.diag(box_iou_numpy(moved, samples.gt_boxes)).mean()
    assert before < 0.9 and after > 0.97, (before, after)


def test_regressor_files_are_reused_and_refused_for_other_settings(fitted: Fitted) -> None:
    stamps = [p.stat().st_mtime_ns for p in fitted.paths]
    proposals = ProposalStore.open(fitted.root / "proposals_train", fitted.train).load_all()
    assert fit_box_regressors(fitted.train, proposals, fitted.config, fitted.members, device="cpu", progress=False) == fitted.paths
    assert [p.stat().st_mtime_ns for p in fitted.paths] == stamps
    other = BoxRegressionConfig(enabled=True, ridge_lambda=5.0, max_samples_per_class=30, min_samples_per_class=2)
    with pytest.raises(CheckpointError, match=r"box_regression\.ridge_lambda: 0\.001 vs 5\.0.*delete it"):
        fit_box_regressors(fitted.train, proposals, other, fitted.members, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"no checkpoint for member\(s\) \[4\]"):
        fit_box_regressors(fitted.train, proposals, fitted.config, fitted.members, [4], device="cpu", progress=False)
    # A regressor belongs to one member file: member 0's under member 1's name is refused.
    swapped = fitted.root / "swapped"
    swapped.mkdir()
    for name in ("member0.pt", "member1.pt"):
        (swapped / name).write_bytes((fitted.members / name).read_bytes())
    (swapped / "box_regressor1.pt").write_bytes(fitted.paths[0].read_bytes())
    (swapped / "box_regressor0.pt").write_bytes(fitted.paths[0].read_bytes())
    with pytest.raises(CheckpointError, match="box regressor of member 0, not of member 1"):
        Ensemble.from_dir(swapped, fitted.train.classes, None, "cpu", box_regression=True)
    (swapped / "box_regressor1.pt").unlink()
    with pytest.raises(CheckpointError, match="no box regressor for member 1"):
        Ensemble.from_dir(swapped, fitted.train.classes, None, "cpu", box_regression=True)
    with pytest.raises(FileNotFoundError, match="box_regressor1.pt is missing"):
        fill_score_cache(fitted.test, fitted.root / "proposals_test", swapped, fitted.root / "no_scores", None, "cpu", DetectConfig(), progress=False, box_regression=True)


def test_score_cache_keeps_deltas_only_when_on(fitted: Fitted) -> None:
    config = DetectConfig(chunk_images=2, score_threshold=0.0)
    args = (fitted.test, fitted.root / "proposals_test", fitted.members)
    plain_dir, regressed_dir = fitted.root / "scores_plain", fitted.root / "scores_regressed"
    fill_score_cache(*args, plain_dir, None, "cpu", config, progress=False)
    fill_score_cache(*args, regressed_dir, None, "cpu", config, progress=False, box_regression=True)

    # Off: the layout of a cache made before the option existed.
    plain_meta = json.loads((plain_dir / "meta.json").read_text())
    assert set(plain_meta) == {"dataset_fingerprint", "proposals", "members", "chunk_images"}
    with np.load(plain_dir / "chunk-00000.npz") as data:
        assert data.files == ["image_ids", "offsets", "boxes", "probabilities"]
    regressed_meta = json.loads((regressed_dir / "meta.json").read_text())
    assert regressed_meta["box_regressors"] == {str(m): file_digest(p) for m, p in enumerate(fitted.paths)}
    with np.load(regressed_dir / "chunk-00001.npz") as data:
        assert data.files == ["image_ids", "offsets", "boxes", "probabilities", "deltas", "image_sizes"]
        assert data["deltas"].dtype == np.float16 and data["image_sizes"].tolist() == [[fitted.test[2].height, fitted.test[2].width]]

    plain = load_member_scores(plain_dir, fitted.test, [0, 1])
    scores = load_member_scores(regressed_dir, fitted.test, [0, 1])
    assert plain.deltas is None and scores.deltas is not None
    for a, b, boxes, deltas in zip(plain.probabilities, scores.probabilities, scores.boxes, scores.deltas):
        np.testing.assert_array_equal(a, b)  # the feature pass gives the very same probabilities
        assert deltas.shape == (2, len(boxes), fitted.test.num_classes, 4)

    # The deltas are each member's regressor on its own pooled features.
    ensemble = Ensemble.from_dir(fitted.members, fitted.test.classes, None, "cpu", box_regression=True)
    pooled = ensemble.score([fitted.test.load_image(0)], [scores.boxes[0]], features=True)[0].features
    expected = torch.stack([regressor.predict(f) for regressor, f in zip(ensemble.regressors, pooled)])
    np.testing.assert_allclose(scores.deltas[0].astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)

    with pytest.raises(ValueError, match="scores from other data, proposals, members or box regressors"):
        fill_score_cache(*args, plain_dir, None, "cpu", config, progress=False, box_regression=True)
    with pytest.raises(ValueError, match="no box-regression deltas"):
        detections_from_scores(plain, config, box_regression=True)

    # Without regression every detection is a proposal; with it they moved (by the mean deltas
    # of the chosen members), and stay inside the image.
    def proposal_share(detections) -> float:  # noqa: ANN001
        proposals = {tuple(box) for boxes in scores.boxes for box in boxes.tolist()}
        return float(np.mean([tuple(box) in proposals for box in detections.boxes.tolist()]))

    unmoved = detections_from_scores(scores, config)
    moved = detections_from_scores(scores, config, box_regression=True)
    assert len(unmoved) > 0 and len(moved) > 0
    assert proposal_share(unmoved) == 1.0 and proposal_share(moved) < 0.1
    single = detections_from_scores(scores, config, [1], box_regression=True)
    assert not np.array_equal(single.boxes, moved.boxes)
    size = {r.image_id: (r.width, r.height) for r in fitted.test}
    assert all(0 <= b[0] <= b[2] <= size[i][0] and 0 <= b[1] <= b[3] <= size[i][1] for i, b in zip(moved.image_ids, moved.boxes))
