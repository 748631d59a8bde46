"""Datasets: one string names a dataset everywhere, and every reader returns a :class:`Dataset`.

Specs:

- ``voc:ROOT[:SPLIT]``: ``ROOT/Annotations/*.xml`` with images in ``ROOT/JPEGImages`` or
  ``ROOT/images``; ``SPLIT`` reads ``ROOT/ImageSets/Main/SPLIT.txt``, or, when it ends in
  ``.txt``, that file itself (a path from the working directory): a split of a dataset that ships
  none is then kept beside the code, without writing into the dataset. The class list is
  ``ROOT/classes.txt`` when present, else the sorted names found in all annotations under ROOT
  (not only the split, so every split of one root shares one class list).
- ``ilsvrc:ROOT:SPLIT``: the ILSVRC DET layout (``Data/DET/SPLIT``, ``Annotations/DET/SPLIT``,
  ``ImageSets/DET/SPLIT.txt``, ``devkit/data/map_det.txt`` or ``meta_det.mat``, and for validation
  splits the devkit's ``*_det_validation_blacklist.txt``). Classes are the synset names.
- ``coco:ANNOTATIONS.json[:IMAGE_DIR]``: COCO instances JSON; images beside the JSON by default.
- ``synthetic[:N[:SEED]]``: the built-in generated dataset (:mod:`detection.data.synthetic`).
- ``imagefolder:ROOT``: ``ROOT/CLASS/*.jpg`` for the classification track; each image is one
  whole-image box of its folder's class.

Faults that make data unusable raise :class:`~detection.core.problems.DataError` naming the file;
faults that leave it usable (a box outside the image, a single-pixel box, an unknown class in a
fixed class list) are counted warnings summarised in one line at the end of the read.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from detection.core import boxes as box_ops
from detection.core.problems import DataError, WarningTally
from detection.data.images import IMAGE_SUFFIXES, read_image, read_image_size
from detection.data.records import Dataset, Detections, ImageRecord

__all__ = [
    "Dataset",
    "ImageRecord",
    "Detections",
    "load_dataset",
    "read_voc",
    "read_ilsvrc",
    "read_coco",
    "read_imagefolder",
    "write_voc",
    "to_coco_json",
    "parse_spec",
]

logger = logging.getLogger(__name__)

VOC_IMAGE_DIRS = ("JPEGImages", "images")


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """Split ``kind:a:b`` into ``("kind", ["a", "b"])``; a bare ``synthetic`` has no arguments."""
    kind, _, rest = spec.partition(":")
    if kind not in READERS:
        known = ", ".join(sorted(READERS))
        raise ValueError(f"unknown dataset spec '{spec}': it must start with one of {known} (e.g. voc:ROOT:SPLIT)")
    return kind, [part for part in rest.split(":")] if rest else []


def load_dataset(spec: str) -> Dataset:
    """Read the dataset a spec names (see the module note for the forms)."""
    kind, args = parse_spec(spec)
    return READERS[kind](spec, args)


# ----------------------------------------------------------------------------- image loading


def _load_checked(record: ImageRecord) -> np.ndarray:
    """Decode a record's image and check it has the size the annotations were read against."""
    image = read_image(record.path)  # type: ignore[arg-type]
    if image.shape[:2] != (record.height, record.width):
        raise DataError(
            record.path,  # type: ignore[arg-type]
            f"decoded size {image.shape[1]}x{image.shape[0]} differs from the recorded {record.width}x{record.height}",
        )
    return image


# ----------------------------------------------------------------------------- VOC-style XML


def _xml_text(node: ET.Element, tag: str, path: Path, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DataError(path, f"missing <{tag}>")
        return None
    return child.text.strip()


def _xml_number(node: ET.Element, tag: str, path: Path) -> float:
    text = _xml_text(node, tag, path)
    try:
        return float(text)  # type: ignore[arg-type]
    except ValueError:
        raise DataError(path, f"<{tag}> is not a number: '{text}'") from None


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DataError(path, f"malformed XML ({error})") from None
    except OSError as error:
        raise DataError(path, f"cannot read annotation ({error.strerror})") from None


def _xml_objects(
    root: ET.Element, path: Path, one_based: bool
) -> list[tuple[str, np.ndarray, bool]]:
    """``(name, box (4,) in our convention, difficult)`` for every ``<object>`` of an annotation.

    ``one_based`` says the file uses 1-based inclusive pixels (VOC); ILSVRC's are 0-based
    inclusive. Either way the continuous box is ``(xmin - o, ymin - o, xmax + 1 - o, ymax + 1 - o)``
    with ``o = 1`` or ``0``.
    """
    objects = []
    offset = 1.0 if one_based else 0.0
    for index, node in enumerate(root.findall("object")):
        where = f"{path} object {index}"
        name = _xml_text(node, "name", path)
        bndbox = node.find("bndbox")
        if bndbox is None:
            raise DataError(where, "object without <bndbox>")
        xmin, ymin, xmax, ymax = (_xml_number(bndbox, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise DataError(where, f"inverted box: xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}")
        box = np.array([xmin - offset, ymin - offset, xmax + 1.0 - offset, ymax + 1.0 - offset], dtype=np.float32)
        difficult_text = _xml_text(node, "difficult", path, required=False)
        difficult = difficult_text not in (None, "0", "false", "False")
        objects.append((name, box, difficult))  # type: ignore[arg-type]
    return objects


def _image_size(root: ET.Element, path: Path, image_path: Path, tally: WarningTally) -> tuple[int, int]:
    """Image size from the image header; the XML ``<size>`` is only checked against it."""
    width, height = read_image_size(image_path)
    size = root.find("size")
    if size is not None:
        xml_w, xml_h = _xml_text(size, "width", path, False), _xml_text(size, "height", path, False)
        if xml_w and xml_h and (int(float(xml_w)), int(float(xml_h))) != (width, height):
            tally.warn("annotation size differs from the image, image size used", path, f"{xml_w}x{xml_h} vs {width}x{height}")
    return width, height


def _clean_boxes(
    objects: list[tuple[str, np.ndarray, bool]],
    width: int,
    height: int,
    class_index: dict[str, int],
    path: Path,
    tally: WarningTally,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip boxes to the image, drop what cannot be used (with counted warnings)."""
    boxes, labels, difficult = [], [], []
    for index, (name, box, is_difficult) in enumerate(objects):
        where = f"{path} object {index}"
        if name not in class_index:
            tally.warn("unknown class name, box dropped", where, name)
            continue
        clipped = box_ops.clip_boxes(box[None], width, height)[0]
        if not np.array_equal(clipped, box):
            tally.warn("box outside the image, clipped", where, f"{box.tolist()} in {width}x{height}")
        if clipped[2] - clipped[0] <= 1.0 or clipped[3] - clipped[1] <= 1.0:
            tally.warn("degenerate box (a side of 1 px or less), dropped", where, f"{box.tolist()}")
            continue
        boxes.append(clipped)
        labels.append(class_index[name])
        difficult.append(is_difficult)
    return (
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(labels, dtype=np.int64),
        np.array(difficult, dtype=bool),
    )


def _find_image(image_dirs: Iterable[Path], filename: str | None, stem: str) -> Path | None:
    names = [filename] if filename else []
    names += [stem + suffix for suffix in IMAGE_SUFFIXES]
    for directory in image_dirs:
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def _split_path(root: Path, split: str) -> Path:
    """A VOC split name -> its file: ``ROOT/ImageSets/Main/SPLIT.txt``, or ``SPLIT`` itself if it ends in .txt."""
    return Path(split) if split.endswith(".txt") else root / "ImageSets" / "Main" / f"{split}.txt"


def _read_split_file(path: Path) -> list[str]:
    """The first field of every non-empty line (the image ids)."""
    return [line.split()[0] for line in _read_split_file_lines(path)]


def _voc_classes(root: Path, annotation_paths: list[Path]) -> list[str]:
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if len(set(classes)) != len(classes):
            raise DataError(classes_file, "duplicate class names")
        return classes
    names: set[str] = set()
    for path in annotation_paths:
        for node in _parse_xml(path).findall("object"):
            name = node.findtext("name")
            if name and name.strip():
                names.add(name.strip())
    if not names:
        raise DataError(root / "Annotations", "no objects in any annotation, so no class list (add classes.txt)")
    return sorted(names)


def read_voc(root: str | Path, split: str | None = None, spec: str | None = None) -> Dataset:
    """Read a VOC-style folder (see the module note). Image sizes come from the image headers."""
    root = Path(root)
    annotation_dir = root / "Annotations"
    if not annotation_dir.is_dir():
        # The raccoon layout keeps annotations in lower case.
        annotation_dir = root / "annotations"
    if not annotation_dir.is_dir():
        raise DataError(root, "no Annotations/ folder: not a VOC-style dataset")
    all_paths = sorted(annotation_dir.glob("*.xml"))
    if split:
        ids = _read_split_file(_split_path(root, split))
        paths = [annotation_dir / f"{image_id}.xml" for image_id in ids]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(missing[0], f"listed in split '{split}' but missing ({len(missing)} missing in all)")
    else:
        paths = all_paths
    if not paths:
        raise DataError(annotation_dir, "no .xml annotations found")
    classes = _voc_classes(root, all_paths)
    class_index = {name: i for i, name in enumerate(classes)}
    image_dirs = [root / name for name in VOC_IMAGE_DIRS if (root / name).is_dir()]
    spec = spec or f"voc:{root}" + (f":{split}" if split else "")
    tally = WarningTally(spec, logger)
    records = []
    for path in paths:
        xml_root = _parse_xml(path)
        filename = _xml_text(xml_root, "filename", path, required=False)
        image_path = _find_image(image_dirs, filename, path.stem)
        if image_path is None:
            raise DataError(path, f"image '{filename or path.stem}' not found in {', '.join(map(str, image_dirs)) or root}")
        width, height = _image_size(xml_root, path, image_path, tally)
        objects = _xml_objects(xml_root, path, one_based=True)
        boxes, labels, difficult = _clean_boxes(objects, width, height, class_index, path, tally)
        records.append(ImageRecord(path.stem, image_path, width, height, boxes, labels, difficult))
    tally.log_summary()
    return Dataset(spec=spec, classes=classes, records=records, image_loader=_load_checked)


# ----------------------------------------------------------------------------- ILSVRC DET


def _ilsvrc_synsets(root: Path) -> tuple[list[str], list[str]]:
    """``(wnids, names)`` of the 200 DET classes in devkit order."""
    data = root / "devkit" / "data"
    map_file = data / "map_det.txt"
    if map_file.is_file():
        wnids, names = [], []
        for line in map_file.read_text().splitlines():
            fields = line.split(maxsplit=2)
            if len(fields) == 3:
                wnids.append(fields[0])
                names.append(fields[2].strip())
        return wnids, names
    meta_file = data / "meta_det.mat"
    if meta_file.is_file():
        import scipy.io  # only for ILSVRC's meta_det.mat

        # The devkit's own code takes synsets(1:200): the DET classes come first.
        synsets = scipy.io.loadmat(meta_file, squeeze_me=True)["synsets"][:200]
        return [str(s["WNID"]) for s in synsets], [str(s["name"]) for s in synsets]
    raise DataError(data, "neither map_det.txt nor meta_det.mat found: cannot map synsets to names")


def _ilsvrc_blacklist(
    root: Path, split: str, id_of_index: dict[int, str], wnid_index: dict[str, int]
) -> frozenset[tuple[str, int]]:
    """``(image_id, label)`` pairs from the devkit's blacklist (lines ``IMAGE_INDEX WNID``)."""
    if not split.startswith("val"):
        return frozenset()
    candidates = sorted((root / "devkit" / "data").glob("*det_validation_blacklist.txt"))
    if not candidates:
        logger.warning("%s: no *det_validation_blacklist.txt in devkit/data; no pairs blacklisted", root)
        return frozenset()
    pairs = set()
    for line in candidates[-1].read_text().splitlines():
        fields = line.split()
        if len(fields) != 2:
            continue
        image_index, wnid = int(fields[0]), fields[1]
        if image_index in id_of_index and wnid in wnid_index:
            pairs.add((id_of_index[image_index], wnid_index[wnid]))
    return frozenset(pairs)


def read_ilsvrc(root: str | Path, split: str, spec: str | None = None) -> Dataset:
    """Read the ILSVRC DET layout. ILSVRC XML boxes are 0-based inclusive pixels."""
    root = Path(root)
    split_file = root / "ImageSets" / "DET" / f"{split}.txt"
    lines = [line.split() for line in _read_split_file_lines(split_file)]
    ids = [fields[0] for fields in lines]
    # The devkit's blacklist names images by the index in the split file's second column.
    index_of_line = {int(fields[1]) if len(fields) > 1 else n + 1: fields[0] for n, fields in enumerate(lines)}
    wnids, names = _ilsvrc_synsets(root)
    wnid_index = {wnid: i for i, wnid in enumerate(wnids)}
    spec = spec or f"ilsvrc:{root}:{split}"
    tally = WarningTally(spec, logger)
    image_dir = root / "Data" / "DET" / split
    annotation_dir = root / "Annotations" / "DET" / split
    records = []
    for image_id in ids:
        image_path = _find_image([image_dir], None, image_id)
        if image_path is None:
            raise DataError(image_dir / f"{image_id}.JPEG", "image listed in the split file not found")
        xml_path = annotation_dir / f"{image_id}.xml"
        if xml_path.is_file():
            xml_root = _parse_xml(xml_path)
            width, height = _image_size(xml_root, xml_path, image_path, tally)
            objects = _xml_objects(xml_root, xml_path, one_based=False)
        else:
            # Negative training images have no annotation file.
            width, height = read_image_size(image_path)
            objects = []
        boxes, labels, difficult = _clean_boxes(objects, width, height, wnid_index, xml_path, tally)
        records.append(ImageRecord(Path(image_id).name, image_path, width, height, boxes, labels, difficult))
    blacklist = _ilsvrc_blacklist(root, split, {k: Path(v).name for k, v in index_of_line.items()}, wnid_index)
    tally.log_summary()
    return Dataset(spec=spec, classes=names, records=records, image_loader=_load_checked, blacklist=blacklist)


def _read_split_file_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "split file not found")
    return [line for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- COCO JSON


def _load_json(path: Path) -> object:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except json.JSONDecodeError as error:
        raise DataError(path, f"malformed JSON ({error})") from None


def read_coco(annotations: str | Path, image_dir: str | Path | None = None, spec: str | None = None) -> Dataset:
    """Read COCO instances JSON. Image ids become strings; ``iscrowd`` becomes ``crowd`` and the
    optional per-annotation ``ignore`` flag (which :func:`to_coco_json` writes for VOC's
    "difficult") becomes ``difficult``."""
    path = Path(annotations)
    data = _load_json(path)
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise DataError(path, "not COCO instances JSON: needs 'images', 'annotations' and 'categories'")
    image_dir = Path(image_dir) if image_dir else path.parent
    categories = sorted(data["categories"], key=lambda c: c["id"])
    classes = [str(c["name"]) for c in categories]
    class_ids = [int(c["id"]) for c in categories]
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    spec = spec or f"coco:{path}" + (f":{image_dir}" if image_dir != path.parent else "")
    tally = WarningTally(spec, logger)
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    known_images = {img.get("id") for img in data["images"]}
    orphans = sum(len(v) for k, v in by_image.items() if k not in known_images)
    if orphans:
        tally.warn("annotation for an image not in 'images', dropped", path, f"{orphans} annotations")
    records = []
    for image in data["images"]:
        try:
            image_id, width, height = image["id"], int(image["width"]), int(image["height"])
        except (KeyError, TypeError, ValueError):
            raise DataError(path, f"image entry without id/width/height: {str(image)[:120]}") from None
        boxes, labels, crowd, ignore = [], [], [], []
        for ann in by_image.get(image_id, []):
            where = f"{path} annotation {ann.get('id')}"
            if ann.get("category_id") not in label_of:
                tally.warn("unknown category id, annotation dropped", where, str(ann.get("category_id")))
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise DataError(where, f"bbox must be [x, y, w, h], got {bbox}")
            if bbox[2] < 0 or bbox[3] < 0:
                raise DataError(where, f"negative width or height in bbox {bbox}")
            boxes.append(box_ops.xywh_to_xyxy(np.array([bbox]))[0])
            labels.append(label_of[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
            ignore.append(bool(ann.get("ignore", 0)))
        file_name = image.get("file_name")
        records.append(
            ImageRecord(
                str(image_id),
                image_dir / file_name if file_name else None,
                width,
                height,
                np.array(boxes, np.float32).reshape(-1, 4),
                np.array(labels, np.int64),
                difficult=np.array(ignore, bool),
                crowd=np.array(crowd, bool),
            )
        )
    tally.log_summary()
    return Dataset(spec=spec, classes=classes, records=records, image_loader=_load_checked, class_ids=class_ids)


def to_coco_json(dataset: Dataset) -> dict:
    """The dataset's ground truth as COCO instances JSON (categories numbered 1..C)."""
    images, annotations = [], []
    for index, record in enumerate(dataset.records):
        images.append({"id": index + 1, "file_name": str(record.path or record.image_id), "width": record.width, "height": record.height})
        xywh = box_ops.xyxy_to_xywh(record.boxes)
        for box, label, crowd, difficult in zip(xywh, record.labels, record.crowd, record.difficult):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": int(label) + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(crowd),
                    "ignore": int(difficult),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(dataset.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


# ----------------------------------------------------------------------------- folders of images


def read_imagefolder(root: str | Path, spec: str | None = None) -> Dataset:
    """``ROOT/CLASS/IMAGE``: one whole-image box per image, labelled with its folder's class."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(root, "no class folders (expected ROOT/CLASS/IMAGE files)")
    spec = spec or f"imagefolder:{root}"
    tally = WarningTally(spec, logger)
    records = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix not in IMAGE_SUFFIXES and path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                width, height = read_image_size(path)
            except DataError as error:
                tally.warn("unreadable image, skipped", path, error.fault)
                continue
            box = np.array([[0, 0, width, height]], np.float32)
            records.append(ImageRecord(f"{name}/{path.stem}", path, width, height, box, np.array([label])))
    if not records:
        raise DataError(root, "no readable images in the class folders")
    tally.log_summary()
    return Dataset(spec=spec, classes=classes, records=records, image_loader=_load_checked)


# ----------------------------------------------------------------------------- writing VOC


def _voc_xml(record: ImageRecord, classes: list[str], filename: str) -> str:
    voc = box_ops.xyxy_to_voc(record.boxes)
    objects = []
    for box, label, difficult in zip(voc, record.labels, record.difficult):
        coords = "".join(f"<{tag}>{value:g}</{tag}>" for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box))
        objects.append(
            f"  <object><name>{classes[label]}</name><difficult>{int(difficult)}</difficult>"
            f"<bndbox>{coords}</bndbox></object>"
        )
    return (
        f"<annotation>\n  <filename>{filename}</filename>\n"
        f"  <size><width>{record.width}</width><height>{record.height}</height><depth>3</depth></size>\n"
        + "\n".join(objects)
        + "\n</annotation>\n"
    )


def write_voc(dataset: Dataset, root: str | Path, splits: dict[str, list[str]] | None = None) -> Path:
    """Write a dataset as a VOC-style folder readable by :func:`read_voc` (PNG images, lossless).

    Boxes are written as VOC 1-based inclusive pixels; a box that is not pixel-aligned is
    written with fractional coordinates, which :func:`read_voc` reads back exactly.
    """
    import cv2  # OpenCV takes ~0.1 s to load; only writing images needs it, not reading a dataset

    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(dataset.classes) + "\n")
    for record in dataset.records:
        filename = f"{record.image_id}.png"
        image = dataset.load_image(record)
        cv2.imwrite(str(root / "JPEGImages" / filename), np.ascontiguousarray(image[:, :, ::-1]))
        (root / "Annotations" / f"{record.image_id}.xml").write_text(_voc_xml(record, dataset.classes, filename))
    for name, ids in (splits or {}).items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


# ----------------------------------------------------------------------------- the spec table


def _voc_from_spec(spec: str, args: list[str]) -> Dataset:
    if not args or not args[0]:
        raise ValueError(f"'{spec}': voc needs a root folder, voc:ROOT[:SPLIT]")
    return read_voc(args[0], args[1] if len(args) > 1 and args[1] else None, spec=spec)


def _ilsvrc_from_spec(spec: str, args: list[str]) -> Dataset:
    if len(args) != 2 or not all(args):
        raise ValueError(f"'{spec}': ilsvrc needs a root folder and a split, ilsvrc:ROOT:SPLIT")
    return read_ilsvrc(args[0], args[1], spec=spec)


def _coco_from_spec(spec: str, args: list[str]) -> Dataset:
    if not args or not args[0]:
        raise ValueError(f"'{spec}': coco needs an annotations file, coco:ANNOTATIONS.json[:IMAGE_DIR]")
    return read_coco(args[0], args[1] if len(args) > 1 and args[1] else None, spec=spec)


def _synthetic_from_spec(spec: str, args: list[str]) -> Dataset:
    try:
        num_images = int(args[0]) if args and args[0] else 200
        seed = int(args[1]) if len(args) > 1 and args[1] else 0
    except ValueError:
        raise ValueError(f"'{spec}': synthetic takes integers, synthetic[:N[:SEED]]") from None
    if num_images < 1 or len(args) > 2:
        raise ValueError(f"'{spec}': synthetic[:N[:SEED]] needs N >= 1")
    from detection.data.synthetic import synthetic_dataset  # draws with OpenCV: loaded only for this spec

    return synthetic_dataset(num_images, seed)


def _imagefolder_from_spec(spec: str, args: list[str]) -> Dataset:
    if not args or not args[0]:
        raise ValueError(f"'{spec}': imagefolder needs a root folder, imagefolder:ROOT")
    return read_imagefolder(args[0], spec=spec)


READERS: dict[str, Callable[[str, list[str]], Dataset]] = {
    "voc": _voc_from_spec,
    "ilsvrc": _ilsvrc_from_spec,
    "coco": _coco_from_spec,
    "synthetic": _synthetic_from_spec,
    "imagefolder": _imagefolder_from_spec,
}
