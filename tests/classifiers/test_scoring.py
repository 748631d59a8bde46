"""classifiers.scoring on small GoogLeNets (width 1/8, 32x32 crops) on the CPU.

Tests that compare with an eager float32 reference ask for ``bf16=False``: on a CPU with native
bfloat16 (AMX) the scorer autocasts by default, which moves probabilities by ~1e-3.

The real ``torch.compile`` path takes a minute or more per model on a small CPU, so it is
exercised by one opt-in test (``RCNN_TEST_COMPILE=1``); the bookkeeping around it (static
batch shapes, copies, recompiling after the weights change) is tested with a stand-in compiler.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classifiers import scoring
from classifiers.crops import warp_crops
from classifiers.inception import GoogLeNet, GoogLeNetConfig
from classifiers.scoring import CropScorer, default_batch_size
from detection.core.devices import bf16_supported

NUM_CLASSES = 5
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(seed: int) -> GoogLeNet:
    torch.manual_seed(seed)
    return GoogLeNet(GoogLeNetConfig.paper(num_classes=NUM_CLASSES, width=0.125, input_size=SIZE))


@pytest.fixture(scope="module")
def models() -> list[GoogLeNet]:
    return [small_model(seed) for seed in range(3)]


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return torch.randn(11, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def expected_probabilities(models: list[GoogLeNet], crops: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        probs = []
        for model in models:
            was_training = model.training
            model.eval()
            probs.append(F.softmax(model(crops), dim=1))
            model.train(was_training)
    return torch.stack(probs).mean(0)


def test_mean_softmax_of_the_members(models: list[GoogLeNet], crops: torch.Tensor) -> None:
    out = CropScorer(models, device="cpu", batch_size=4, bf16=False)(crops)
    assert out.shape == (11, NUM_CLASSES) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected_probabilities(models, crops), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.sum(1), torch.ones(11))


def test_per_member_probabilities_are_each_members_softmax(models: list[GoogLeNet], crops: torch.Tensor) -> None:
    scorer = CropScorer(models, device="cpu", batch_size=4, bf16=False)
    per_member = scorer.score(crops, per_member=True)
    assert per_member.shape == (3, 11, NUM_CLASSES)
    for index, model in enumerate(models):
        torch.testing.assert_close(per_member[index], expected_probabilities([model], crops), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(per_member.mean(0), scorer(crops))
    assert scorer.score(crops[:0], per_member=True).shape == (3, 0, NUM_CLASSES)


def test_score_with_features_gives_the_same_probabilities_and_each_members_features(models: list[GoogLeNet], crops: torch.Tensor) -> None:
    scorer = CropScorer(models, device="cpu", batch_size=4, bf16=False)
    probabilities, features = scorer.score(crops, with_features=True)
    assert torch.equal(probabilities, scorer.score(crops, per_member=True))
    assert len(features) == 3
    for model, member_features in zip(models, features):
        with torch.no_grad():
            expected = model.eval().features(crops)
        assert member_features.shape == (11, model.num_features) and member_features.dtype == torch.float32
        torch.testing.assert_close(member_features, expected, atol=1e-5, rtol=1e-4)
    empty_probabilities, empty_features = scorer.score(crops[:0], with_features=True)
    assert empty_probabilities.shape == (3, 0, NUM_CLASSES) and [f.shape for f in empty_features] == [(0, m.num_features) for m in models]
    with pytest.raises(TypeError, match="forward_with_features"):
        CropScorer([torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, NUM_CLASSES))], device="cpu").score(crops, with_features=True)


def test_batch_size_and_layout_do_not_change_scores(models: list[GoogLeNet], crops: torch.Tensor) -> None:
    reference = CropScorer(models[:1], device="cpu", batch_size=64, bf16=False)(crops)
    for batch_size, channels_last in ((1, True), (5, False), (11, True)):
        out = CropScorer(models[:1], device="cpu", batch_size=batch_size, channels_last=channels_last, bf16=False)(crops)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)


def test_originals_are_left_alone(crops: torch.Tensor) -> None:
    model = small_model(7).train()
    CropScorer([model], device="cpu")(crops)
    assert model.training
    assert model.conv1.conv.weight.is_contiguous() and model.conv1.conv.weight.requires_grad


def test_changed_weights_are_picked_up(crops: torch.Tensor) -> None:
    model = small_model(8)
    scorer = CropScorer([model], device="cpu", bf16=False)
    before = scorer(crops)
    with torch.no_grad():
        model.fc.bias.copy_(torch.arange(NUM_CLASSES, dtype=torch.float32))
    after = scorer(crops)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected_probabilities([model], crops), atol=1e-5, rtol=1e-4)


def test_empty_input(models: list[GoogLeNet]) -> None:
    scorer = CropScorer(models, device="cpu")
    assert scorer(torch.zeros(0, 3, SIZE, SIZE)).shape == (0, NUM_CLASSES)
    image = np.zeros((40, 50, 3), np.uint8)
    assert scorer.score_boxes([image], [np.zeros((0, 4), np.float32)], size=SIZE).shape == (0, NUM_CLASSES)


def test_score_boxes_equals_scoring_warped_crops(models: list[GoogLeNet]) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), rng.integers(0, 256, (90, 50, 3), dtype=np.uint8)]
    boxes = [np.array([[0, 0, 40, 30], [10, 20, 70, 55], [-5, -5, 90, 70]], np.float32), np.array([[5, 5, 45, 85]], np.float32)]
    scorer = CropScorer(models, device="cpu", batch_size=3)
    direct = scorer.score_boxes(images, boxes, size=SIZE)
    assert direct.shape == (4, NUM_CLASSES)
    torch.testing.assert_close(direct, scorer(warp_crops(images, boxes, SIZE)), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        scorer.score_boxes(images, boxes[:1], size=SIZE)


def test_bf16_by_default_exactly_where_it_is_native(models: list[GoogLeNet]) -> None:
    assert CropScorer(models[:1], device="cpu").bf16 == bf16_supported(torch.device("cpu"))
    assert CropScorer(models[:1], device="cpu", bf16=False).bf16 is False


def test_bf16_autocast_runs_and_stays_close(models: list[GoogLeNet], crops: torch.Tensor) -> None:
    out = CropScorer(models[:1], device="cpu", bf16=True)(crops[:4])
    assert out.dtype == torch.float32
    reference = expected_probabilities(models[:1], crops[:4])
    assert not torch.equal(out, reference)  # it did run in bfloat16
    torch.testing.assert_close(out, reference, atol=0.05, rtol=0)


def test_bad_arguments(models: list[GoogLeNet]) -> None:
    with pytest.raises(ValueError):
        CropScorer([], device="cpu")
    with pytest.raises(ValueError):
        CropScorer(models, device="cpu", batch_size=0)


def test_compiled_members_see_one_batch_shape_and_recompile_after_changes(
    monkeypatch: pytest.MonkeyPatch, crops: torch.Tensor
) -> None:
    compiled: list[torch.nn.Module] = []
    shapes: list[tuple[int, ...]] = []

    def fake_compile(model: torch.nn.Module, mode: str | None):
        compiled.append(model)

        def forward(x: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(x.shape))
            return model(x)

        return forward

    monkeypatch.setattr(scoring, "_compile_member", fake_compile)
    model = small_model(9)
    scorer = CropScorer([model], device="cpu", batch_size=4, compile=True, bf16=False)
    out = scorer(crops)  # 11 crops: 4 + 4 + 3 padded to 4
    assert set(shapes) == {(4, 3, SIZE, SIZE)} and len(shapes) == 3
    torch.testing.assert_close(out, expected_probabilities([model], crops), atol=1e-5, rtol=1e-4)
    assert len(compiled) == 1 and compiled[0] is not model
    scorer(crops)
    assert len(compiled) == 1  # nothing changed: the compiled copy is reused
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    torch.testing.assert_close(scorer(crops), expected_probabilities([model], crops), atol=1e-5, rtol=1e-4)
    assert len(compiled) == 2
    # The features path is compiled on first use only, with the same static batch shape.
    shapes.clear()
    probabilities, _ = scorer.score(crops, with_features=True)
    assert len(compiled) == 3 and set(shapes) == {(4, 3, SIZE, SIZE)} and len(shapes) == 3
    torch.testing.assert_close(probabilities[0], expected_probabilities([model], crops), atol=1e-5, rtol=1e-4)
    scorer.score(crops, with_features=True)
    assert len(compiled) == 3


def test_compiled_scorers_cut_crops_with_gather_crops(eager_compile: list[int], models: list[GoogLeNet]) -> None:
    warps = eager_compile
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), rng.integers(0, 256, (45, 45, 3), dtype=np.uint8)]
    boxes = [np.array([[0, 0, 40, 30], [10, 20, 70, 55], [-5, -5, 90, 70]], np.float32), np.array([[5, 5, 30, 40], [1, 2, 3, 4]], np.float32)]
    compiled = CropScorer(models, device="cpu", batch_size=2, compile=True, bf16=False).score_boxes(images, boxes, size=SIZE, per_member=True)
    assert warps == [2, 2, 1]  # batch by batch, the last one short (the members pad it)
    eager = CropScorer(models, device="cpu", batch_size=2, bf16=False).score_boxes(images, boxes, size=SIZE, per_member=True)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-3)
    # Averaged crops (sampling_ratio 0) have no gather twin: roi_align cuts them.
    warps.clear()
    CropScorer(models[:1], device="cpu", batch_size=2, compile=True, bf16=False).score_boxes(images, boxes, size=SIZE, sampling_ratio=0)
    assert warps == []


def test_compiled_scorers_cut_crops_with_roi_align_where_the_compiled_gather_is_unsafe(
    eager_compile: list[int], models: list[GoogLeNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    from classifiers import scoring

    monkeypatch.setattr(scoring, "compiled_warp_supported", lambda device: False)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)]
    boxes = [np.array([[0, 0, 40, 30], [10, 20, 70, 55], [-5, -5, 90, 70]], np.float32)]
    compiled = CropScorer(models, device="cpu", batch_size=2, compile=True, bf16=False).score_boxes(images, boxes, size=SIZE, per_member=True)
    assert eager_compile == []  # roi_align cut them
    eager = CropScorer(models, device="cpu", batch_size=2, bf16=False).score_boxes(images, boxes, size=SIZE, per_member=True)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-3)


def test_the_compiled_gather_is_kept_to_avx512_kernels_on_the_cpu() -> None:
    """With AVX2 kernels (an AVX2-only CPU's) the compiled gather is not used."""
    from tests.conftest import printed_with_avx2_kernels

    code = "import torch; from classifiers.scoring import compiled_warp_supported as s; print(s(torch.device('cpu')))"
    assert printed_with_avx2_kernels(code) == "False"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RCNN_TEST_COMPILE") != "1", reason="set RCNN_TEST_COMPILE=1 (compiles for minutes)")
@pytest.mark.parametrize("freeze", [True, False])
def test_real_compile_matches_eager(crops: torch.Tensor, freeze: bool) -> None:
    members = [small_model(10), small_model(11)]
    scorer = CropScorer(members, device="cpu", batch_size=8, compile=True, freeze=freeze, bf16=False)
    torch.testing.assert_close(scorer(crops), expected_probabilities(members, crops), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        members[1].conv1.conv.weight.mul_(2.0)  # frozen constants must not go stale
    torch.testing.assert_close(scorer(crops), expected_probabilities(members, crops), atol=1e-5, rtol=1e-4)
    # The compiled warp: the same crops as roi_align, for canvases of every size.
    rng = np.random.default_rng(2)
    eager = CropScorer(members, device="cpu", batch_size=8, bf16=False)
    for shape in ((60, 80), (45, 45), (70, 30)):
        images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8)]
        boxes = [np.array([[0, 0, 40, 30], [10, 20, 70, 55], [-5, -5, 90, 70]], np.float32)]
        torch.testing.assert_close(scorer.score_boxes(images, boxes, size=SIZE), eager.score_boxes(images, boxes, size=SIZE), atol=1e-4, rtol=1e-3)


def test_default_batch_size_holds_the_activations_of_16_full_width_crops() -> None:
    cpu = torch.device("cpu")
    assert default_batch_size(cpu) == 16  # the paper's network: 224 px, width 1
    assert default_batch_size(cpu, 112, 1.0) == 64  # a quarter of the pixels: four times the crops
    assert default_batch_size(cpu, 224, 0.5) == 32
    assert default_batch_size(cpu, 96, 0.25) == 256  # bccd_cpu.yaml's members: 348, capped
    assert default_batch_size(torch.device("cuda")) == 128
