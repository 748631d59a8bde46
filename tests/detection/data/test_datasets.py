import json
import logging

import numpy as np
import pytest
from PIL import Image

from detection.core.problems import DataError
from detection.data.datasets import load_dataset, read_coco, read_voc, to_coco_json, write_voc
from tests.conftest import REPO


def test_voc_reads_boxes_in_our_convention(make_voc):
    root = make_voc({"a": (40, 30, [("cat", (1, 1, 10, 20), 0), ("dog", (5, 6, 40, 30), 1)])})
    dataset = read_voc(root)
    assert dataset.classes == ["cat", "dog"]
    record = dataset[0]
    np.testing.assert_array_equal(record.boxes, [[0, 0, 10, 20], [4, 5, 40, 30]])
    assert record.labels.tolist() == [0, 1]
    assert record.difficult.tolist() == [False, True]
    assert (record.width, record.height) == (40, 30)
    assert dataset.load_image(0).shape == (30, 40, 3)


def test_voc_split_and_class_list_from_all_annotations(make_voc):
    root = make_voc(
        {"a": (20, 20, [("cat", (1, 1, 10, 10), 0)]), "b": (20, 20, [("dog", (1, 1, 10, 10), 0)])},
        splits={"train": ["a"]},
    )
    dataset = load_dataset(f"voc:{root}:train")
    assert [r.image_id for r in dataset] == ["a"]
    assert dataset.classes == ["cat", "dog"]  # the split shares the root's class list
    with pytest.raises(DataError, match="split file not found"):
        load_dataset(f"voc:{root}:nosuchsplit")


def test_voc_split_from_a_file_outside_the_root(make_voc, tmp_path):
    root = make_voc({"a": (20, 20, [("cat", (1, 1, 10, 10), 0)]), "b": (20, 20, [("dog", (1, 1, 10, 10), 0)])})
    split = tmp_path / "mine.txt"
    split.write_text("b\n\n")
    dataset = load_dataset(f"voc:{root}:{split}")
    assert [r.image_id for r in dataset] == ["b"] and dataset.classes == ["cat", "dog"]
    with pytest.raises(DataError, match="split file not found"):
        load_dataset(f"voc:{root}:{tmp_path / 'other.txt'}")


def test_degenerate_and_outside_boxes_are_counted_warnings(make_voc, caplog):
    root = make_voc({"a": (20, 20, [("cat", (5, 5, 5, 5), 0), ("cat", (-3, 2, 30, 10), 0), ("cat", (2, 2, 9, 9), 0)])})
    with caplog.at_level(logging.WARNING):
        dataset = read_voc(root)
    np.testing.assert_array_equal(dataset[0].boxes, [[0, 1, 20, 10], [1, 1, 9, 9]])
    text = caplog.text
    assert "degenerate box" in text and "a.xml object 0" in text
    assert "outside the image, clipped" in text
    assert "2 warnings" in text  # the summary line


def test_inverted_box_is_an_error_naming_file_and_object(make_voc):
    root = make_voc({"a": (20, 20, [("cat", (9, 2, 3, 8), 0)])})
    with pytest.raises(DataError, match=r"a\.xml object 0: inverted box"):
        read_voc(root)


def test_unknown_class_with_fixed_class_list(make_voc, caplog):
    root = make_voc({"a": (20, 20, [("cat", (1, 1, 9, 9), 0), ("zebra", (1, 1, 9, 9), 0)])}, classes=["cat", "dog"])
    with caplog.at_level(logging.WARNING):
        dataset = read_voc(root)
    assert dataset.classes == ["cat", "dog"] and dataset[0].labels.tolist() == [0]
    assert "unknown class name" in caplog.text and "zebra" in caplog.text


def test_malformed_xml_names_the_file(make_voc):
    root = make_voc({"a": (20, 20, [("cat", (1, 1, 9, 9), 0)])})
    (root / "Annotations" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"a\.xml: malformed XML"):
        read_voc(root)


def test_non_numeric_coordinate(make_voc):
    root = make_voc({"a": (20, 20, [("cat", ("one", 1, 9, 9), 0)])})
    with pytest.raises(DataError, match="not a number"):
        read_voc(root)


def test_image_without_objects_and_missing_image(make_voc):
    root = make_voc({"a": (20, 20, [("cat", (1, 1, 9, 9), 0)]), "empty": (20, 20, [])})
    dataset = read_voc(root)
    assert dataset[1].num_boxes == 0 and dataset[1].boxes.shape == (0, 4)
    (root / "JPEGImages" / "empty.png").unlink()
    with pytest.raises(DataError, match="empty.xml: image 'empty.png' not found"):
        read_voc(root)


def test_truncated_jpeg_loads_in_part_and_one_without_picture_data_fails_naming_it(make_voc):
    root = make_voc({"a": (64, 64, [("cat", (1, 1, 9, 9), 0)])})
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / "a.jpg", quality=90)
    (root / "JPEGImages" / "a.png").unlink()
    data = (root / "JPEGImages" / "a.jpg").read_bytes()
    (root / "JPEGImages" / "a.jpg").write_bytes(data[: len(data) // 2])
    (root / "Annotations" / "a.xml").write_text((root / "Annotations" / "a.xml").read_text().replace("a.png", "a.jpg"))
    dataset = read_voc(root)  # the header is intact: reading annotations works
    assert dataset.load_image(0).shape == (64, 64, 3)  # the first half of the picture, grey below
    # cut just past the start-of-scan header (FFDA, then its 2-byte length): headers only, no picture
    scan = data.index(b"\xff\xda")
    (root / "JPEGImages" / "a.jpg").write_bytes(data[: scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")])
    with pytest.raises(DataError, match="a.jpg.*before any picture data"):
        dataset.load_image(0)


def test_grayscale_rgba_16bit_images_load_as_rgb(make_voc):
    root = make_voc({"g": (16, 12, []), "r": (16, 12, []), "d": (16, 12, [("cat", (1, 1, 9, 9), 0)])})
    Image.new("L", (16, 12), 100).save(root / "JPEGImages" / "g.png")
    Image.new("RGBA", (16, 12), (1, 2, 3, 4)).save(root / "JPEGImages" / "r.png")
    Image.fromarray(np.full((12, 16), 40000, np.uint16)).save(root / "JPEGImages" / "d.png")
    dataset = read_voc(root)
    for index in range(3):
        image = dataset.load_image(index)
        assert image.shape == (12, 16, 3) and image.dtype == np.uint8


def test_size_mismatch_between_xml_and_image_is_a_warning(make_voc, caplog):
    root = make_voc({"a": (20, 20, [("cat", (1, 1, 9, 9), 0)])})
    xml = (root / "Annotations" / "a.xml").read_text().replace("<width>20</width>", "<width>25</width>")
    (root / "Annotations" / "a.xml").write_text(xml)
    with caplog.at_level(logging.WARNING):
        dataset = read_voc(root)
    assert dataset[0].width == 20 and "differs from the image" in caplog.text


def test_coco_reader_and_round_trip(make_voc, tmp_path):
    root = make_voc({"a": (40, 30, [("cat", (1, 1, 10, 20), 0), ("dog", (5, 6, 40, 30), 1)]), "b": (20, 20, [])})
    voc = read_voc(root)
    coco_json = to_coco_json(voc)
    coco_json["annotations"][0]["iscrowd"] = 1
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco_json))
    coco = read_coco(path)
    assert coco.classes == voc.classes and coco.class_ids == [1, 2]
    np.testing.assert_array_equal(coco[0].boxes, voc[0].boxes)
    assert coco[0].crowd.tolist() == [True, False]
    assert [r.image_id for r in coco] == ["1", "2"]


def test_coco_bad_inputs(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: malformed JSON"):
        read_coco(tmp_path / "bad.json")
    (tmp_path / "wrong.json").write_text("[]")
    with pytest.raises(DataError, match="not COCO instances JSON"):
        read_coco(tmp_path / "wrong.json")
    data = {"images": [{"id": 1, "width": 10, "height": 10, "file_name": "x.jpg"}], "categories": [{"id": 3, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, -3, 4]}]}
    (tmp_path / "neg.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="annotation 1: negative width"):
        read_coco(tmp_path / "neg.json")


def test_imagefolder(tmp_path):
    for name in ("ants", "bees"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 6)).save(tmp_path / name / "one.jpg")
    (tmp_path / "bees" / "broken.jpg").write_text("nope")
    dataset = load_dataset(f"imagefolder:{tmp_path}")
    assert dataset.classes == ["ants", "bees"]
    assert len(dataset) == 2  # the broken file is a counted warning, not a crash
    np.testing.assert_array_equal(dataset[1].boxes, [[0, 0, 8, 6]])
    assert dataset[1].labels.tolist() == [1]


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown dataset spec"):
        load_dataset("pascal:/x")
    with pytest.raises(ValueError, match="voc needs a root"):
        load_dataset("voc:")
    with pytest.raises(ValueError, match="ilsvrc needs"):
        load_dataset("ilsvrc:/x")
    with pytest.raises(ValueError, match="integers"):
        load_dataset("synthetic:many")


def test_ilsvrc_layout_with_blacklist(tmp_path):
    root = tmp_path / "ILSVRC"
    (root / "Data" / "DET" / "val").mkdir(parents=True)
    (root / "Annotations" / "DET" / "val").mkdir(parents=True)
    (root / "ImageSets" / "DET").mkdir(parents=True)
    (root / "devkit" / "data").mkdir(parents=True)
    (root / "devkit" / "data" / "map_det.txt").write_text("n0001 1 accordion\nn0002 2 airplane\n")
    (root / "ImageSets" / "DET" / "val.txt").write_text("val_0001 1\nval_0002 2\n")
    (root / "devkit" / "data" / "ILSVRC2014_det_validation_blacklist.txt").write_text("2 n0001\n")
    for image_id in ("val_0001", "val_0002"):
        Image.new("RGB", (30, 20)).save(root / "Data" / "DET" / "val" / f"{image_id}.JPEG")
        xml = ("<annotation><size><width>30</width><height>20</height></size><object><name>n0001</name>"
               "<bndbox><xmin>0</xmin><ymin>0</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
        (root / "Annotations" / "DET" / "val" / f"{image_id}.xml").write_text(xml)
    dataset = load_dataset(f"ilsvrc:{root}:val")
    assert dataset.classes == ["accordion", "airplane"]
    # ILSVRC pixels are 0-based inclusive: xmin=0..xmax=9 is 10 pixels.
    np.testing.assert_array_equal(dataset[0].boxes, [[0, 0, 10, 10]])
    assert dataset.blacklist == frozenset({("val_0002", 0)})


def test_write_voc_round_trip(tmp_path, make_voc):
    root = make_voc({"a": (40, 30, [("cat", (1, 1, 10, 20), 0), ("dog", (5, 6, 40, 30), 1)])})
    original = read_voc(root)
    written = write_voc(original, tmp_path / "copy", splits={"all": ["a"]})
    again = load_dataset(f"voc:{written}:all")
    assert again.classes == original.classes
    np.testing.assert_array_equal(again[0].boxes, original[0].boxes)
    np.testing.assert_array_equal(again[0].difficult, original[0].difficult)
    np.testing.assert_array_equal(again.load_image(0), original.load_image(0))
    assert again.fingerprint() == original.fingerprint()


@pytest.mark.data
def test_bccd_splits(bccd_root, caplog):
    with caplog.at_level(logging.WARNING):
        full = load_dataset(f"voc:{bccd_root}")
    assert len(full) == 364 and full.classes == ["Platelets", "RBC", "WBC"]
    # The two single-pixel RBC boxes are dropped with a counted warning.
    assert "degenerate box" in caplog.text and "2 warnings" in caplog.text
    test = load_dataset(f"voc:{bccd_root}:test")
    trainval = load_dataset(f"voc:{bccd_root}:trainval")
    assert len(test) == 72 and len(trainval) == 292
    assert not {r.image_id for r in test} & {r.image_id for r in trainval}
    assert test.load_image(0).shape == (480, 640, 3)


@pytest.mark.data
def test_raccoon(raccoon_root):
    dataset = load_dataset(f"voc:{raccoon_root}")
    assert len(dataset) == 200 and dataset.classes == ["raccoon"]
    assert sum(r.num_boxes for r in dataset) >= 200


@pytest.mark.data
def test_raccoon_fixed_splits(raccoon_root):
    # The repository's split files: train and test partition the 200 photos, test is the last 40.
    splits = {name: load_dataset(f"voc:{raccoon_root}:{REPO}/configs/splits/raccoon/{name}.txt") for name in ("train", "test", "tune_train", "tune_val")}
    ids = {name: [r.image_id for r in data] for name, data in splits.items()}
    assert len(ids["train"]) == 160 and ids["test"] == [f"raccoon-{i}" for i in range(161, 201)]
    assert set(ids["train"]) | set(ids["test"]) == {f"raccoon-{i}" for i in range(1, 201)}
    assert ids["tune_train"] + ids["tune_val"] == ids["train"]
