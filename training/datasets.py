"""Instance-segmentation datasets: COCO files (ours and any other) and the SAOM authors' layout.

Both readers validate when they are built (missing image files, masks whose size differs from
their image, unknown categories, COCO segmentations that would not decode) and raise
:class:`DatasetError` naming the file and the problem, so a bad dataset fails before training
starts instead of hours into it. They return the same torch-free :class:`Sample`.

The COCO writing helpers (:func:`write_coco`, :func:`atomic_write_json`; a mask's annotation is
``coco_masks.mask_to_annotation``) and the iTHOR scene split (:func:`ithor_split`, :func:`ithor_scenes`)
are shared by the Ai2Thor collector and the synthetic generator, so every dataset we write has one
format.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np

from saom_ros.atomic import atomic_write_bytes
from saom_ros.image_decode import (MAX_IMAGE_PIXELS, ImageError, check_pixels, decode_rgb,
                                   open_header)
from saom_ros.training.coco_masks import decode_segmentation, segmentation_problem


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names the file."""


@dataclass
class Sample:
    """One image with its instances (numpy, CPU)."""

    image: np.ndarray  # uint8 [H, W, 3] RGB
    masks: np.ndarray  # bool [N, H, W]
    class_ids: np.ndarray  # int64 [N], 1..C in the dataset's class_names
    image_id: int
    file_name: str  # path of the image file as the dataset names it
    # COCO crowd regions (iscrowd 1): not instances, so not trained on or matched; COCO AP
    # ignores detections on them, so evaluation needs them.
    crowd_masks: np.ndarray  # bool [M, H, W]
    crowd_class_ids: np.ndarray  # int64 [M]

    def __len__(self) -> int:
        return len(self.class_ids)


# ---------------------------------------------------------------------------------------------
# iTHOR scenes and their split
# ---------------------------------------------------------------------------------------------

# FloorPlan numbers per room type: the first of 30 scenes (iTHOR documentation).
ROOM_TYPES: dict[str, int] = {"kitchen": 1, "living_room": 201, "bedroom": 301, "bathroom": 401}
SPLITS = ("train", "val", "test")
# Per room type: scenes 1-20 train, 21-25 val, 26-30 test (iTHOR documentation's suggestion).
_SPLIT_BOUNDS = ((20, "train"), (25, "val"), (30, "test"))
_SCENE_RE = re.compile(r"^FloorPlan(\d+)(_physics)?$")


def scene_number(scene: str) -> int:
    """FloorPlan number of an iTHOR scene name (``FloorPlan12`` or ``FloorPlan12_physics``)."""
    match = _SCENE_RE.match(scene)
    if match is None or ithor_room_type(int(match.group(1))) is None:
        raise ValueError(f"{scene!r} is not an iTHOR scene (FloorPlan1-30, 201-230, 301-330, "
                         "401-430)")
    return int(match.group(1))


def ithor_room_type(number: int) -> str | None:
    """Room type of FloorPlan ``number``, or None if no iTHOR scene has that number."""
    for room, first in ROOM_TYPES.items():
        if first <= number < first + 30:
            return room
    return None


def ithor_split(scene: str) -> str:
    """``train``, ``val`` or ``test`` for an iTHOR scene (split by scene, per room type)."""
    number = scene_number(scene)
    position = number - ROOM_TYPES[ithor_room_type(number)] + 1  # 1..30
    return next(split for bound, split in _SPLIT_BOUNDS if position <= bound)


def ithor_scenes(room_types: Sequence[str] = tuple(ROOM_TYPES),
                 split: str | None = None) -> list[str]:
    """iTHOR scene names of ``room_types`` (all by default), optionally only one split."""
    unknown = [r for r in room_types if r not in ROOM_TYPES]
    if unknown:
        raise ValueError(f"unknown room type(s) {', '.join(unknown)}; known: "
                         f"{', '.join(ROOM_TYPES)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    scenes = [f"FloorPlan{ROOM_TYPES[r] + i}" for r in room_types for i in range(30)]
    return [s for s in scenes if split is None or ithor_split(s) == split]


# ---------------------------------------------------------------------------------------------
# Writing COCO
# ---------------------------------------------------------------------------------------------

def atomic_write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as compact JSON."""
    atomic_write_bytes(path, json.dumps(data, separators=(",", ":")).encode())


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Atomically write an RGB uint8 image; the format follows the suffix (PNG is lossless)."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode an image as {path.suffix!r} for {path}")
    atomic_write_bytes(path, encoded.tobytes())


def coco_categories(class_names: Sequence[str]) -> list[dict]:
    """COCO categories with ids 1..C in the order of ``class_names`` (the project's class ids)."""
    return [{"id": i + 1, "name": name, "supercategory": "object"}
            for i, name in enumerate(class_names)]


def write_coco(path: str | Path, images: Sequence[dict], annotations: Sequence[dict],
               categories: Sequence[dict], info: Mapping[str, Any] | None = None) -> None:
    """Atomically write a COCO instance-segmentation file."""
    atomic_write_json(path, {"info": dict(info or {}), "licenses": [], "images": list(images),
                             "annotations": list(annotations), "categories": list(categories)})


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] of a PNG or JPEG file; DatasetError if it is missing, unreadable or
    has more than MAX_IMAGE_PIXELS pixels (checked on the header, before decoding)."""
    if not Path(path).is_file():
        raise DatasetError(f"image file {path} does not exist")
    try:
        return decode_rgb(Path(path).read_bytes(), MAX_IMAGE_PIXELS)
    except ImageError as err:
        raise DatasetError(f"image file {path} is not a readable image: {err}") from None


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG or JPEG from its header, which must be within MAX_IMAGE_PIXELS."""
    if not path.is_file():
        raise DatasetError(f"image file {path} does not exist")
    try:
        with open(path, "rb") as stream, open_header(stream) as img:
            width, height = img.size
            check_pixels(width, height, MAX_IMAGE_PIXELS)
    except ImageError as err:
        raise DatasetError(f"image file {path} is not a readable image: {err}") from None
    return height, width


def load_json(path: Path) -> Any:
    """The JSON in ``path``; DatasetError naming it if it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"dataset file {path} is not valid JSON: {err}") from None


def _class_mapping(names: Sequence[str], class_names: Sequence[str] | None, source: str
                   ) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class names of the samples and name -> class id (1-based)."""
    if class_names is None:
        class_names = list(dict.fromkeys(names))
    missing = [n for n in names if n not in class_names]
    if missing:
        raise DatasetError(f"{source}: unknown categor{'ies' if len(missing) > 1 else 'y'} "
                           f"{', '.join(map(repr, missing))} (not in the class list)")
    return tuple(class_names), {n: i + 1 for i, n in enumerate(class_names)}


def _decode_all(anns: Sequence[tuple[dict, int]], height: int, width: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """bool [N, H, W] masks and int64 [N] class ids of (annotation, class id) pairs."""
    masks = np.zeros((len(anns), height, width), dtype=bool)
    for k, (ann, _) in enumerate(anns):
        masks[k] = decode_segmentation(ann["segmentation"], height, width)
    return masks, np.array([c for _, c in anns], dtype=np.int64)


class CocoInstances:
    """A COCO instance-segmentation dataset (any COCO file; ours use class ids as category ids).

    ``class_names`` fixes the class vocabulary: category names map onto it by name, and a
    category outside it is an error. Without it the vocabulary is the file's category names in
    category-id order. Crowd annotations (``iscrowd`` 1) are not instances: a sample holds them
    apart, as ``crowd_masks`` (checked like instances).
    ``image_root`` defaults to the folder of the annotation file.
    """

    def __init__(self, annotation_file: str | Path, image_root: str | Path | None = None,
                 class_names: Sequence[str] | None = None):
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root) if image_root is not None \
            else self.annotation_file.parent
        data = load_json(self.annotation_file)
        src = str(self.annotation_file)
        if not isinstance(data, dict) or not all(
                isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise DatasetError(f"{src} is not a COCO instance file (needs lists 'images', "
                               "'annotations' and 'categories')")
        try:
            self._index(data, class_names, src)
        except (KeyError, TypeError, AttributeError) as err:
            raise DatasetError(f"{src} has a malformed entry ({type(err).__name__}: {err})") \
                from None

    def _index(self, data: dict, class_names: Sequence[str] | None, src: str) -> None:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.class_names, name_to_id = _class_mapping(
            [c["name"] for c in categories], class_names, src)
        category_to_class = {c["id"]: name_to_id[c["name"]] for c in categories}

        self.images: list[dict] = data["images"]
        by_id = {}
        for img in self.images:
            if img["id"] in by_id:
                raise DatasetError(f"{src}: image id {img['id']!r} is used twice "
                                   f"({by_id[img['id']]['file_name']} and {img['file_name']})")
            for key in ("height", "width"):
                if type(img[key]) is not int:
                    raise DatasetError(f"{src}: image {img['id']!r} ({img['file_name']}) has "
                                       f"{key} {img[key]!r}, a {type(img[key]).__name__}, "
                                       "not an integer")
            path = self.image_root / img["file_name"]
            size = _image_size(path)
            if size != (img["height"], img["width"]):
                raise DatasetError(f"image file {path} is {size[1]}x{size[0]} but {src} says "
                                   f"{img['width']}x{img['height']}")
            by_id[img["id"]] = img
        self._annotations: dict[int, list[tuple[dict, int]]] = {i: [] for i in by_id}
        self._crowd: dict[int, list[tuple[dict, int]]] = {i: [] for i in by_id}
        for ann in data["annotations"]:
            where = f"{src}: annotation {ann.get('id')}"
            if ann["category_id"] not in category_to_class:
                raise DatasetError(f"{where} has unknown category id {ann['category_id']}")
            img = by_id.get(ann["image_id"])
            if img is None:
                raise DatasetError(f"{where} refers to unknown image id {ann['image_id']}")
            seg = ann.get("segmentation")
            if isinstance(seg, dict) and list(seg.get("size", [])) != [img["height"], img["width"]]:
                raise DatasetError(f"{where}: mask size {seg.get('size')} (h, w) differs from "
                                   f"its image {img['file_name']} "
                                   f"({img['height']}, {img['width']})")
            problem = segmentation_problem(seg, img["height"], img["width"])
            if problem is not None:
                raise DatasetError(f"{where}: {problem}")
            target = self._crowd if ann.get("iscrowd", 0) else self._annotations
            target[ann["image_id"]].append((ann, category_to_class[ann["category_id"]]))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        info = self.images[index]
        h, w = info["height"], info["width"]
        masks, class_ids = _decode_all(self._annotations[info["id"]], h, w)
        crowd_masks, crowd_class_ids = _decode_all(self._crowd[info["id"]], h, w)
        return Sample(image=read_image(self.image_root / info["file_name"]), masks=masks,
                      class_ids=class_ids, image_id=int(info["id"]), file_name=info["file_name"],
                      crowd_masks=crowd_masks, crowd_class_ids=crowd_class_ids)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


class SaomMetadataDataset:
    """The SAOM authors' layout: a metadata JSON with ``entity classes`` and ``train_data`` /
    ``val_data`` / ``test_data`` lists whose entries hold ``image_name``, ``entity_indices`` (one
    class index per instance) and ``entity_masks`` (paths of per-instance binary mask images).

    ``entity classes`` may be a list of names (an index is a position in it, counted from
    ``index_base``) or a mapping name -> index. Paths are relative to ``root`` (default: the
    metadata file's folder). Image ids are positions in the split.
    """

    _SPLIT_KEYS = {"train": "train_data", "val": "val_data", "test": "test_data"}

    def __init__(self, metadata_file: str | Path, split: str, root: str | Path | None = None,
                 class_names: Sequence[str] | None = None, index_base: int = 0):
        self.metadata_file = Path(metadata_file)
        self.root = Path(root) if root is not None else self.metadata_file.parent
        src = str(self.metadata_file)
        if split not in self._SPLIT_KEYS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(self._SPLIT_KEYS)}")
        data = load_json(self.metadata_file)
        key = self._SPLIT_KEYS[split]
        if not isinstance(data, dict) or "entity classes" not in data or key not in data:
            raise DatasetError(f"{src} lacks 'entity classes' or {key!r}")
        try:
            self._index(data, key, class_names, index_base, src)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"{src} has a malformed entry ({type(err).__name__}: {err})") \
                from None

    def _index(self, data: dict, key: str, class_names: Sequence[str] | None, index_base: int,
               src: str) -> None:
        entity_classes = data["entity classes"]
        if isinstance(entity_classes, dict):
            index_to_name = {int(v): k for k, v in entity_classes.items()}
        else:
            index_to_name = {i + index_base: n for i, n in enumerate(entity_classes)}
        self.class_names, name_to_id = _class_mapping(
            list(index_to_name.values()), class_names, src)
        self.entries: list[tuple[Path, list[Path], np.ndarray]] = []
        for position, entry in enumerate(data[key]):
            image = self.root / entry["image_name"]
            size = _image_size(image)
            masks = [self.root / m for m in entry["entity_masks"]]
            indices = entry["entity_indices"]
            if len(indices) != len(masks):
                raise DatasetError(f"{src}: {key}[{position}] ({image}) has {len(indices)} "
                                   f"entity indices but {len(masks)} masks")
            for index in indices:
                if int(index) not in index_to_name:
                    raise DatasetError(f"{src}: {key}[{position}] ({image}) has unknown category "
                                       f"index {index}")
            for mask in masks:
                mask_size = _image_size(mask)
                if mask_size != size:
                    raise DatasetError(f"mask {mask} is {mask_size[1]}x{mask_size[0]} but its "
                                       f"image {image} is {size[1]}x{size[0]}")
            class_ids = np.array([name_to_id[index_to_name[int(i)]] for i in indices],
                                 dtype=np.int64)
            self.entries.append((image, masks, class_ids))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        image_path, mask_paths, class_ids = self.entries[index]
        image = read_image(image_path)
        masks = np.zeros((len(mask_paths),) + image.shape[:2], dtype=bool)
        for k, path in enumerate(mask_paths):
            mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise DatasetError(f"mask {path} does not exist or is not a readable image")
            masks[k] = mask > 0
        return Sample(image=image, masks=masks, class_ids=class_ids.copy(), image_id=index,
                      file_name=str(image_path.relative_to(self.root)
                                    if image_path.is_relative_to(self.root) else image_path),
                      crowd_masks=np.zeros((0,) + image.shape[:2], dtype=bool),  # no crowds
                      crowd_class_ids=np.zeros(0, dtype=np.int64))

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def open_dataset(path: str | Path, split: str = "train") -> CocoInstances | SaomMetadataDataset:
    """A COCO file or a SAOM-layout metadata file (``split`` picks its list) as a dataset."""
    path = Path(path)
    if path.is_dir():  # e.g. the folder collect or synth wrote
        hint = (f"pass its {path / 'annotations.json'}" if (path / "annotations.json").is_file()
                else "pass a COCO or SAOM-layout JSON file")
        raise DatasetError(f"dataset {path} is a folder; {hint}")
    try:
        with open(path) as f:
            keys = json.load(f).keys()
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise DatasetError(f"dataset file {path} is not a JSON object: {err}") from None
    if "entity classes" in keys:
        return SaomMetadataDataset(path, split)
    return CocoInstances(path)
