"""models/kwcoco_demo.py: kwcoco's toy shapes written in our COCO layout load through models/datasets.py."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("kwcoco")
pytest.importorskip("cv2")  # kwcoco's toy generator needs OpenCV

from models import kwcoco_demo  # noqa: E402
from models.datasets import build_dataset  # noqa: E402


@pytest.fixture(scope="module")
def kwcoco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kwcoco")
    kwcoco_demo.generate(str(root), num_train=3, num_val=4, size=64, seed=5)
    return root


def _load(root, split):
    with open(os.path.join(root, "annotations", f"instances_{split}2017.json")) as f:
        return json.load(f)


def test_kwcoco_layout_boxes_and_categories(kwcoco_dir):
    for split, count in (("train", 3), ("val", 4)):
        coco = _load(kwcoco_dir, split)
        assert len(coco["images"]) == count and coco["annotations"], split
        assert all(c["id"] >= 1 for c in coco["categories"]), coco["categories"]
        category_ids = {c["id"] for c in coco["categories"]}
        images = {img["id"]: img for img in coco["images"]}
        for img in coco["images"]:
            with Image.open(os.path.join(kwcoco_dir, f"{split}2017", img["file_name"])) as pil:
                assert (pil.width, pil.height) == (img["width"], img["height"]) == (64, 64)
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            img = images[ann["image_id"]]
            assert ann["category_id"] in category_ids
            assert w > 0 and h > 0 and x >= 0 and y >= 0, ann
            assert x + w <= img["width"] and y + h <= img["height"], (ann, img)


def test_kwcoco_is_reproducible_and_seeded(kwcoco_dir, tmp_path):
    kwcoco_demo.generate(str(tmp_path / "same"), num_train=3, num_val=4, size=64, seed=5)
    kwcoco_demo.generate(str(tmp_path / "other"), num_train=3, num_val=1, size=64, seed=6)
    assert _load(tmp_path / "same", "train") == _load(kwcoco_dir, "train")
    assert _load(tmp_path / "other", "train") != _load(kwcoco_dir, "train")
    first = np.asarray(Image.open(kwcoco_dir / "train2017" / "000001.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same" / "train2017" / "000001.png")), first)


def test_kwcoco_loads_through_build_dataset(kwcoco_dir):
    dataset = build_dataset("val", str(kwcoco_dir), image_scale=0.1)
    coco = _load(kwcoco_dir, "val")
    assert len(dataset) == 4
    assert dataset.num_classes == max(c["id"] for c in coco["categories"]) + 1
    per_image = {img["id"]: 0 for img in coco["images"]}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] += 1
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.ndim == 3 and image.shape[0] == 3
        assert len(target["boxes"]) == per_image[target["image_id"]]
        boxes = target["boxes"]  # (N, 4) normalised cx, cy, w, h
        assert torch.all(boxes >= 0) and torch.all(boxes <= 1)
        assert set(target["labels"].tolist()) <= {c["id"] for c in coco["categories"]}
