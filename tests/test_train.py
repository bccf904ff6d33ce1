"""Data, synthetic dataset, COCO evaluation, checkpoints and bad input of models/{synthetic,datasets,engine,train}.

These tests need no detector: they check what the training loop is built on. The tests that train or evaluate
the SAM-DETR itself are in test_train_model.py.
"""

import json
import logging
import random

import pytest
import torch
from pycocotools.coco import COCO

from models import synthetic
from models.datasets import InputError, build_dataset, collate_fn, make_transforms, max_image_size
from models.engine import coco_evaluate, predictions_to_coco


def _write_coco(root, images, annotations, categories=synthetic.CATEGORIES, split="val"):
    """A COCO-layout split under `root` with the given json entries; images are written as real PNGs."""
    from PIL import Image
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for image in images:
        Image.new("RGB", (image["width"], image["height"]), (90, 120, 150)).save(root / f"{split}2017" /
                                                                                 image["file_name"])
    path = root / "annotations" / f"instances_{split}2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(root), num_train=12, num_val=10, size=64, seed=3)
    return root


def _load_coco(path):
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


# ------------------------------------------------------------------------------------------- synthetic data
def test_synthetic_dataset_is_reproducible_and_valid(coco_dir, tmp_path):
    synthetic.generate(str(tmp_path), num_train=12, num_val=10, size=64, seed=3)
    for split in ("train", "val"):
        name = f"annotations/instances_{split}2017.json"
        ours, again = json.loads((coco_dir / name).read_text()), json.loads((tmp_path / name).read_text())
        assert ours == again  # same seed, same dataset
        sizes = {img["id"]: (img["width"], img["height"]) for img in ours["images"]}
        for ann in ours["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 0 < ann["area"] <= w * h
    ids = sorted(c["id"] for c in ours["categories"])
    assert ids != list(range(1, len(ids) + 1)), "category ids are meant to be non-contiguous"
    other = json.loads((tmp_path / "annotations/instances_train2017.json").read_text())
    synthetic.generate(str(tmp_path / "other"), num_train=12, num_val=1, size=64, seed=4)
    assert json.loads((tmp_path / "other/annotations/instances_train2017.json").read_text()) != other


def test_synthetic_boxes_are_the_shapes_extent(tmp_path):
    """The box of an object alone on a flat background is exactly the extent of the pixels that changed."""
    import numpy as np
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, objects = synthetic.make_image(rng, 48, 64, max_objects=1, empty_fraction=0.0, clutter=0.0,
                                              min_frac=0.2, max_frac=0.6)
        category_id, (x, y, w, h), area = objects[0]
        name = next(c["name"] for c in synthetic.CATEGORIES if c["id"] == category_id)
        from PIL import Image, ImageDraw
        layer = Image.new("L", (64, 48), 0)
        synthetic._draw_shape(ImageDraw.Draw(layer), name, int(x), int(y), int(x + w), int(y + h), 255)
        ys, xs = np.nonzero(np.asarray(layer))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert area == len(xs)


# ------------------------------------------------------------------------------------------------ datasets
def test_val_targets_are_the_annotations(coco_dir):
    dataset = build_dataset("val", str(coco_dir), image_scale=0.1)  # 80 * 0.1: shorter side 80
    coco = dataset.coco
    assert dataset.num_classes == max(c["id"] for c in synthetic.CATEGORIES) + 1
    for index in range(len(dataset)):
        image, target = dataset[index]
        height, width = target["size"].tolist()
        assert image.shape == (3, height, width) and min(height, width) == 80
        anns = coco.loadAnns(coco.getAnnIds(target["image_id"]))
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        expected = torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4)  # x y w h in file pixels
        orig_h, orig_w = target["orig_size"].tolist()
        cx = (expected[:, 0] + expected[:, 2] / 2) / orig_w
        cy = (expected[:, 1] + expected[:, 3] / 2) / orig_h
        relative = torch.stack([cx, cy, expected[:, 2] / orig_w, expected[:, 3] / orig_h], dim=1)
        torch.testing.assert_close(target["boxes"], relative)


def test_augmentation_moves_boxes_with_the_image(tmp_path):
    """A white rectangle on black: after every random flip/resize/crop its target box is where its pixels are."""
    from PIL import Image
    image = Image.new("RGB", (120, 90), (0, 0, 0))
    image.paste((255, 255, 255), (30, 20, 100, 60))  # x 30..99, y 20..59
    (tmp_path / "train2017").mkdir()
    image.save(tmp_path / "train2017" / "a.png")
    _write_coco(tmp_path, [], [], split="val")
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a.png", "width": 120, "height": 90}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [30, 20, 70, 40], "area": 2800,
                         "iscrowd": 0}],
        "categories": synthetic.CATEGORIES}))
    dataset = build_dataset("train", str(tmp_path), image_scale=0.15)
    torch.manual_seed(0)
    flipped = 0
    black, white = (make_transforms("val", 1.0).transforms[-1](torch.full((3, 1, 1), v, dtype=torch.uint8)).mean()
                    for v in (0, 255))
    for _ in range(40):
        image, target = dataset[0]
        bright = image.mean(0) > (black + white) / 2  # the rectangle, edges cut at half intensity
        if not bright.any():
            assert len(target["boxes"]) == 0  # cropped away
            continue
        ys, xs = torch.nonzero(bright, as_tuple=True)
        height, width = image.shape[1:]
        cx, cy, w, h = (target["boxes"][0] * torch.tensor([width, height, width, height])).tolist()
        # Resampling blurs an edge over about one source pixel: w / 70 output pixels (the zoom), at least 1.
        tolerance = 1 + max(1.0, w / 70)
        assert abs((cx - w / 2) - xs.min().item()) <= tolerance
        assert abs((cx + w / 2) - (xs.max().item() + 1)) <= tolerance
        assert abs((cy - h / 2) - ys.min().item()) <= tolerance
        assert abs((cy + h / 2) - (ys.max().item() + 1)) <= tolerance
        flipped += cx / width > 0.5 + 0.05
        assert target["labels"].tolist() == [3]
    assert 0 < flipped < 40  # the rectangle sits left of centre: right of it only when flipped


def test_train_sizes_follow_image_scale():
    transform = make_transforms("train", image_scale=0.1)
    torch.manual_seed(0)
    from torchvision import tv_tensors
    for _ in range(20):
        image = tv_tensors.Image(torch.zeros(3, 600, 800, dtype=torch.uint8))
        boxes = tv_tensors.BoundingBoxes(torch.tensor([[100.0, 100.0, 500.0, 400.0]]), format="XYXY",
                                         canvas_size=(600, 800))
        out, _ = transform(image, {"boxes": boxes, "labels": torch.tensor([1])})
        assert 38 <= min(out.shape[1:]) <= 80 and max(out.shape[1:]) <= 133  # DETR's 480..800 / 1333 x 0.1


@pytest.mark.parametrize("fixed_canvas", [False, True])
def test_collate_pads_and_masks(coco_dir, fixed_canvas):
    dataset = build_dataset("train", str(coco_dir), image_scale=0.1)
    torch.manual_seed(1)
    batch = [dataset[i] for i in range(4)]
    if fixed_canvas:  # --compile's padding: the largest size any transform of this image_scale gives
        height = width = max_image_size(0.1)
        images, mask, targets = collate_fn(batch, canvas=(height, width))
    else:
        images, mask, targets = collate_fn(batch)
        height = max(b[0].shape[1] for b in batch)
        width = max(b[0].shape[2] for b in batch)
    assert images.shape == (4, 3, height, width) and mask.shape == (4, height, width) and mask.dtype == torch.bool
    for i, (image, target) in enumerate(batch):
        h, w = image.shape[1:]
        assert not mask[i, :h, :w].any() and mask[i, h:].all() and mask[i, :, w:].all()
        assert torch.equal(images[i, :, :h, :w], image) and not images[i, :, h:].any()
        assert targets[i] is target


def test_collate_canvas_must_hold_the_images(coco_dir):
    batch = [build_dataset("val", str(coco_dir), image_scale=0.1)[0]]
    height, width = batch[0][0].shape[1:]
    with pytest.raises(ValueError, match=f"{height}x{width} does not fit the canvas"):
        collate_fn(batch, canvas=(height, width - 1))


def test_empty_images_are_samples(coco_dir):
    coco = _load_coco(coco_dir / "annotations/instances_train2017.json")
    empty = [i for i, image_id in enumerate(sorted(coco.imgs)) if not coco.getAnnIds(image_id)]
    assert empty, "the synthetic split should include an image without objects"
    dataset = build_dataset("train", str(coco_dir), image_scale=0.1)
    _, target = dataset[empty[0]]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


# ---------------------------------------------------------------------------------------------- evaluation
def _ground_truth_results(coco):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in coco.dataset["annotations"]]


def test_coco_evaluate_perfect_and_shuffled(coco_dir):
    coco = _load_coco(coco_dir / "annotations/instances_val2017.json")
    results = _ground_truth_results(coco)
    stats, table = coco_evaluate(coco, results)
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0) and "Average Precision" in table
    boxes = [r["bbox"] for r in results]
    random.Random(0).shuffle(boxes)
    assert coco_evaluate(coco, [dict(r, bbox=b) for r, b in zip(results, boxes)])[0][0] < 0.3
    # Category ids off by their position in the category list (a contiguous-index bug) are not credited.
    index_of = {c["id"]: i for i, c in enumerate(synthetic.CATEGORIES)}
    wrong = [dict(r, category_id=index_of[r["category_id"]]) for r in results]
    assert coco_evaluate(coco, wrong)[0][0] < 0.3
    assert coco_evaluate(coco, [])[0][0] == 0.0


def test_predictions_to_coco_keeps_ids_and_converts_boxes():
    prediction = {"scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([3, 2, 9]),
                  "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 7.0]])}
    results = predictions_to_coco([prediction], [42], category_ids={3, 9})
    assert results == [
        {"image_id": 42, "category_id": 3, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 42, "category_id": 9, "bbox": [5.0, 5.0, 1.0, 2.0], "score": pytest.approx(0.7)},
    ]  # label 2 is no category of the dataset


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_coco_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("train", str(tmp_path / "nowhere"))
    (tmp_path / "train2017").mkdir()
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        build_dataset("train", str(tmp_path))


@pytest.mark.parametrize("annotation, message", [
    ({"image_id": 1, "category_id": 1, "bbox": [5, 5, -3, 4]}, "negative size"),
    ({"image_id": 77, "category_id": 1, "bbox": [5, 5, 3, 4]}, "image id 77"),
    ({"image_id": 1, "category_id": 2, "bbox": [5, 5, 3, 4]}, "category id 2"),
    ({"image_id": 1, "category_id": 1, "bbox": [5, 5, 3]}, "4 finite numbers"),
])
def test_bad_annotations_name_the_file_and_annotation(tmp_path, annotation, message):
    path = _write_coco(tmp_path, [{"id": 1, "file_name": "1.png", "width": 32, "height": 32}],
                       [{"id": 12, "area": 12, "iscrowd": 0, **annotation}])
    with pytest.raises(InputError, match=message) as error:
        build_dataset("val", str(tmp_path))
    assert str(path) in str(error.value) and "annotation id 12" in str(error.value)


def test_missing_image_file(tmp_path):
    _write_coco(tmp_path, [{"id": 1, "file_name": "1.png", "width": 32, "height": 32}], [])
    (tmp_path / "annotations/instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.png", "width": 32, "height": 32},
                   {"id": 2, "file_name": "gone.png", "width": 32, "height": 32}],
        "annotations": [], "categories": synthetic.CATEGORIES}))
    with pytest.raises(InputError, match="gone.png"):
        build_dataset("val", str(tmp_path))


def test_undecodable_image_is_logged_and_skipped(tmp_path, caplog):
    images = [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in (1, 2, 3)]
    _write_coco(tmp_path, images, [{"id": 1, "image_id": 3, "category_id": 4, "bbox": [1, 2, 10, 12], "area": 120,
                                    "iscrowd": 0}])
    (tmp_path / "val2017/2.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    dataset = build_dataset("val", str(tmp_path), image_scale=0.04)
    with caplog.at_level(logging.WARNING, logger="models.datasets"):
        _, target = dataset[1]
    assert target["image_id"] == 3 and "2.png" in caplog.text
    # Through worker processes too: every batch arrives, none crashes.
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=collate_fn)
    (images_batch, mask, targets), = list(loader)
    assert [t["image_id"] for t in targets] == [1, 3, 3]


def test_image_scale_must_be_positive():
    with pytest.raises(InputError, match="image_scale"):
        make_transforms("train", image_scale=0)
