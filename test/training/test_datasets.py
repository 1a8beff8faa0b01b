"""Dataset readers and COCO writing helpers."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO

from image_bombs import jpeg_claiming, png_bomb
from saom_ros.training.coco_masks import mask_to_annotation
from saom_ros.training.datasets import (CocoInstances, DatasetError, SaomMetadataDataset,
                                        atomic_write_json, coco_categories, ithor_scenes,
                                        ithor_split, open_dataset, read_image, scene_number,
                                        write_coco, write_image)


def random_image(rng, h=24, w=32) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def blob(h, w, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def coco_dir(tmp_path):
    """A small COCO dataset written with our helpers: 2 images, 3 instances."""
    rng = np.random.default_rng(0)
    images, annotations, truth = [], [], {}
    for image_id, name in ((7, "a.png"), (9, "sub/b.png")):
        image = random_image(rng)
        write_image(tmp_path / "imgs" / name, image)
        masks = [blob(24, 32, 2, 10, 3, 12), blob(24, 32, 12, 20, 5, 30)][: 1 + (image_id == 9)]
        classes = [2, 3][: len(masks)]
        images.append({"id": image_id, "file_name": name, "width": 32, "height": 24})
        for k, (mask, cls) in enumerate(zip(masks, classes)):
            annotations.append(mask_to_annotation(mask, image_id * 10 + k, image_id, cls))
        truth[image_id] = (image, np.stack(masks), classes)
    write_coco(tmp_path / "ann.json", images, annotations, coco_categories(["Mug", "Cup", "Pan"]))
    return tmp_path, truth


def rewrite(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_ithor_split_by_scene():
    assert [ithor_split(f"FloorPlan{n}") for n in (1, 20, 21, 25, 26, 30)] == \
        ["train", "train", "val", "val", "test", "test"]
    assert ithor_split("FloorPlan421_physics") == "val"
    assert scene_number("FloorPlan305_physics") == 305
    assert len(ithor_scenes()) == 120
    assert [len(ithor_scenes(split=s)) for s in ("train", "val", "test")] == [80, 20, 20]
    assert ithor_scenes(["bedroom"], "test") == [f"FloorPlan{n}" for n in range(326, 331)]
    for bad in ("FloorPlan0", "FloorPlan231", "Kitchen1"):
        with pytest.raises(ValueError, match="not an iTHOR scene"):
            scene_number(bad)
    with pytest.raises(ValueError, match="unknown room type"):
        ithor_scenes(["garage"])


def test_write_coco_is_valid_and_atomic(coco_dir):
    root, _ = coco_dir
    coco = COCO(str(root / "ann.json"))
    assert coco.getCatIds() == [1, 2, 3] and len(coco.getAnnIds()) == 3
    assert not list(root.glob(".*tmp"))  # no temporary files left behind
    atomic_write_json(root / "ann.json", {"replaced": True})
    assert json.loads((root / "ann.json").read_text()) == {"replaced": True}


def test_coco_instances_reads_samples(coco_dir):
    root, truth = coco_dir
    dataset = CocoInstances(root / "ann.json", image_root=root / "imgs")
    assert len(dataset) == 2 and dataset.class_names == ("Mug", "Cup", "Pan")
    for sample in dataset:
        image, masks, classes = truth[sample.image_id]
        np.testing.assert_array_equal(sample.image, image)
        assert sample.masks.dtype == bool
        np.testing.assert_array_equal(sample.masks, masks)
        assert sample.class_ids.tolist() == classes and len(sample) == len(classes)
    assert dataset[1].file_name == "sub/b.png"


def test_coco_instances_maps_foreign_categories_by_name(coco_dir):
    root, _ = coco_dir
    # Another dataset's ids (with gaps, unordered), polygons, uncompressed RLE and a crowd region.
    def foreign(data):
        data["categories"] = [{"id": 90, "name": "Pan"}, {"id": 11, "name": "Mug"},
                              {"id": 44, "name": "Cup"}]
        remap = {1: 11, 2: 44, 3: 90}
        for ann in data["annotations"]:
            ann["category_id"] = remap[ann["category_id"]]
        data["annotations"][0]["segmentation"] = [[3, 2, 12, 2, 12, 10, 3, 10]]
        seg = data["annotations"][1]["segmentation"]
        m = mask_utils.decode(seg)
        counts, value, run = [], 0, 0
        for v in m.flatten(order="F"):
            if v == value:
                run += 1
            else:
                counts.append(run)
                value, run = v, 1
        counts.append(run)
        data["annotations"][1]["segmentation"] = {"size": seg["size"], "counts": counts}
        data["annotations"].append(dict(data["annotations"][2], id=999, iscrowd=1))
    rewrite(root / "ann.json", foreign)
    dataset = CocoInstances(root / "ann.json", image_root=root / "imgs",
                            class_names=["Pan", "Cup", "Mug", "Bowl"])
    assert dataset.class_names == ("Pan", "Cup", "Mug", "Bowl")
    first, second = dataset[0], dataset[1]
    assert first.class_ids.tolist() == [2]  # Cup
    # The polygon traces the original 8x9 blob; pycocotools rasterises it to the same pixels.
    np.testing.assert_array_equal(first.masks[0], blob(24, 32, 2, 10, 3, 12))
    assert second.class_ids.tolist() == [2, 1]  # Cup, Pan; the crowd region is no instance
    np.testing.assert_array_equal(second.masks[0], blob(24, 32, 2, 10, 3, 12))  # from counts
    # ... but it is kept apart, for COCO AP to ignore detections on it
    assert second.crowd_class_ids.tolist() == [1] and first.crowd_masks.shape == (0, 24, 32)
    np.testing.assert_array_equal(second.crowd_masks[0], second.masks[1])
    with pytest.raises(DatasetError, match="unknown categor.*'Mug'"):
        CocoInstances(root / "ann.json", image_root=root / "imgs", class_names=["Pan", "Cup"])


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["images"][1].update(file_name="missing.png"), r"imgs/missing\.png does not exist"),
    (lambda d: d["annotations"][1]["segmentation"].update(size=[20, 32]),
     r"annotation 90: mask size \[20, 32\].*sub/b\.png"),
    (lambda d: d["annotations"][0].update(category_id=8),
     "annotation 70 has unknown category id 8"),
    (lambda d: d["images"][0].update(width=33), r"imgs/a\.png is 32x24 but .* says 33x24"),
    (lambda d: d["annotations"][0].update(image_id=5),
     "annotation 70 refers to unknown image id 5"),
    (lambda d: d.pop("categories"), "not a COCO instance file"),
    (lambda d: d["images"][0].pop("height"), "malformed entry .*'height'"),
    (lambda d: d["images"][0].update(height="24"),
     r"image 7 \(a\.png\) has height '24', a str, not an integer"),
    (lambda d: d["images"][1].update(id=7), r"image id 7 is used twice \(a\.png and sub/b\.png\)"),
    # Segmentations pycocotools would fail on in a DataLoader worker, or (too short) decode into
    # a partial mask without a word.
    (lambda d: d["annotations"][0]["segmentation"].update(counts="!!garbage~~"),
     "annotation 70: RLE counts '!!garbage~~' is not a compressed RLE string"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts=[10000, 10000]),
     r"annotation 70: RLE counts cover 20000 pixels, not height\*width = 24\*32 = 768"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts=[5, 5]),
     "annotation 70: RLE counts cover 10 pixels, not"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts=[700, -5, 73]),
     "annotation 70: RLE counts .* nor a list of non-negative integers"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts="0"),
     "annotation 70: RLE counts cover 0 pixels"),
    (lambda d: d["annotations"][0].update(segmentation=None),
     "annotation 70: segmentation is None, neither polygons nor RLE"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]),
     "annotation 70: polygon 0 has 3 coordinates; a polygon needs an even number, at least 6"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4]]),
     "annotation 70: polygon 1 has 4 coordinates"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, "3", 4, 5, 6]]),
     "annotation 70: polygon 0 is not a list of numbers"),
    (lambda d: d["annotations"][0].update(segmentation=[]),
     "annotation 70: segmentation is an empty list of polygons"),
])
def test_coco_instances_validation(coco_dir, breakage, message):
    root, _ = coco_dir
    rewrite(root / "ann.json", breakage)
    with pytest.raises(DatasetError, match=message):
        CocoInstances(root / "ann.json", image_root=root / "imgs")


def test_coco_instances_accepts_every_rle_pycocotools_writes(tmp_path):
    """The load-time RLE check reads long runs (several characters), runs shorter than the one
    two before (negative differences), empty and full masks as pycocotools does."""
    rng = np.random.default_rng(3)
    h, w = 300, 700
    write_image(tmp_path / "big.png", random_image(rng, h, w))
    masks = [np.zeros((h, w), bool), np.ones((h, w), bool)]
    for _ in range(20):
        mask = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 6)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            mask[y:y + rng.integers(1, h), x:x + rng.integers(1, w)] = True
        masks.append(mask ^ (rng.random((h, w)) < 0.001))
    write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "big.png", "height": h, "width": w}],
               [mask_to_annotation(m, k, 1, 1) for k, m in enumerate(masks)],
               coco_categories(["Mug"]))
    np.testing.assert_array_equal(CocoInstances(tmp_path / "ann.json")[0].masks, masks)


def test_coco_instances_bad_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        CocoInstances(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoInstances(tmp_path / "bad.json")


def test_open_dataset_given_a_folder_says_which_file_to_pass(coco_dir):
    root, _ = coco_dir
    with pytest.raises(DatasetError, match="is a folder; pass a COCO or SAOM-layout JSON file"):
        open_dataset(root)
    (root / "ann.json").rename(root / "annotations.json")  # what collect and synth write
    with pytest.raises(DatasetError) as err:
        open_dataset(root)
    assert str(err.value) == f"dataset {root} is a folder; pass its {root / 'annotations.json'}"


@pytest.fixture
def saom_dir(tmp_path):
    """The SAOM authors' layout: metadata JSON + per-instance binary mask PNGs."""
    rng = np.random.default_rng(1)
    entries, truth = [], []
    for n in range(2):
        image = random_image(rng)
        name = f"images/FloorPlan{n + 1}-{n}.png"
        write_image(tmp_path / name, image)
        masks = [blob(24, 32, 1, 8, 1, 9 + n), blob(24, 32, 10, 23, 4, 20)]
        paths = []
        for k, mask in enumerate(masks):
            path = f"masks/FloorPlan{n + 1}-{n}-Mug-{k}.png"
            (tmp_path / path).parent.mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / path), mask.astype(np.uint8) * 255)
            paths.append(path)
        entries.append({"image_name": name, "entity_indices": [0, 2], "entity_masks": paths})
        truth.append((image, np.stack(masks)))
    metadata = {"entity classes": ["Mug", "Bowl", "Pan"], "train_data": entries,
                "val_data": entries[:1], "test_data": []}
    (tmp_path / "meta.json").write_text(json.dumps(metadata))
    return tmp_path, truth


def test_saom_layout_reads_samples(saom_dir):
    root, truth = saom_dir
    train = SaomMetadataDataset(root / "meta.json", "train")
    assert len(train) == 2 and train.class_names == ("Mug", "Bowl", "Pan")
    for sample, (image, masks) in zip(train, truth):
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.masks, masks)
        assert sample.class_ids.tolist() == [1, 3]
    assert train[1].file_name == "images/FloorPlan2-1.png" and train[1].image_id == 1
    assert len(SaomMetadataDataset(root / "meta.json", "val")) == 1
    assert len(SaomMetadataDataset(root / "meta.json", "test")) == 0
    mapped = SaomMetadataDataset(root / "meta.json", "train", class_names=["Pan", "Mug", "Bowl"])
    assert mapped[0].class_ids.tolist() == [2, 1]
    # Classes as a name -> index mapping, and indices counted from 1.
    def as_mapping(data):
        data["entity classes"] = {"Mug": 1, "Pan": 3}
        for entry in data["train_data"]:
            entry["entity_indices"] = [1, 3]
    rewrite(root / "meta.json", as_mapping)
    by_name = SaomMetadataDataset(root / "meta.json", "train")
    assert by_name.class_names == ("Mug", "Pan") and by_name[0].class_ids.tolist() == [1, 2]
    rewrite(root / "meta.json", lambda d: d.update({"entity classes": ["Mug", "Bowl", "Pan"]}))
    assert SaomMetadataDataset(root / "meta.json", "train", index_base=1)[0].class_ids.tolist() \
        == [1, 3]


@pytest.mark.parametrize("breakage, message", [
    (lambda root, d: d["train_data"][0].update(image_name="images/none.png"),
     r"images/none\.png does not exist"),
    (lambda root, d: cv2.imwrite(str(root / d["train_data"][1]["entity_masks"][0]),
                                 np.zeros((24, 31), np.uint8)),
     r"FloorPlan2-1-Mug-0\.png is 31x24 but its image .*FloorPlan2-1\.png is 32x24"),
    (lambda root, d: d["train_data"][0].update(entity_indices=[0, 7]), "unknown category index 7"),
    (lambda root, d: (root / d["train_data"][0]["entity_masks"][1]).unlink(),
     r"FloorPlan1-0-Mug-1\.png does not exist"),
    (lambda root, d: d["train_data"][0].update(entity_indices=[0]), "1 entity indices but 2 masks"),
    (lambda root, d: d.pop("train_data"), "lacks 'entity classes' or 'train_data'"),
    (lambda root, d: d["train_data"][1].pop("entity_masks"), "malformed entry .*'entity_masks'"),
])
def test_saom_layout_validation(saom_dir, breakage, message):
    root, _ = saom_dir
    rewrite(root / "meta.json", lambda d: breakage(root, d))
    with pytest.raises(DatasetError, match=message):
        SaomMetadataDataset(root / "meta.json", "train")


def test_read_image_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_image(tmp_path / "x.png")
    (tmp_path / "y.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="not a readable image"):
        read_image(tmp_path / "y.png")


def test_image_files_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/bomb.png").write_bytes(png_bomb(5000, 4000))  # 59 kB, 60 MB decoded
    (tmp_path / "images/claims.jpg").write_bytes(jpeg_claiming(30000, 30000))
    for name, dims in [("bomb.png", "5000x4000"), ("claims.jpg", "30000x30000")]:
        with pytest.raises(DatasetError, match=f"{name} is not a readable image: image of {dims} "
                                               "= .* exceeds the limit max_image_pixels"):
            read_image(tmp_path / "images" / name)
    write_coco(tmp_path / "annotations.json", [
        {"id": 1, "file_name": "images/bomb.png", "height": 4000, "width": 5000}], [],
        coco_categories(["Mug"]))
    with pytest.raises(DatasetError, match="bomb.png is not a readable image: image of 5000x4000"):
        CocoInstances(tmp_path / "annotations.json")
