"""COCO-format detection data for training and evaluation: torchvision's `CocoDetection`, `transforms.v2` DETR
augmentation (boxes travel with the image), and a collate function that pads a batch and returns its mask.

A sample is `(image, target)`: image (3, H, W) float32 normalised; target {"boxes": (K, 4) cx cy w h in [0, 1] of
the transformed image, "labels": (K,) int64 COCO category ids, "image_id": int, "orig_size": (2,) h w of the file,
"size": (2,) h w after the transforms}. Labels are the category ids themselves (the official code's convention):
ids need not be contiguous and `num_classes` = largest id + 1.
"""

import contextlib
import io
import logging
import math
import os

import torch
from PIL import UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DETR's sizes at image_scale=1: training resizes the shorter side to one of these (longer side <= MAX_SIZE), or
# resizes to one of CROP_RESIZES, crops a random CROP_RANGE box and resizes again; evaluation uses EVAL_SIZE.
TRAIN_SCALES = tuple(range(480, 801, 32))
CROP_RESIZES = (400, 500, 600)
CROP_RANGE = (384, 600)
EVAL_SIZE = 800
MAX_SIZE = 1333


class InputError(ValueError):
    """A dataset, annotation file or checkpoint that cannot be used; the message names the file and the problem."""


class RandomSizeCrop(v2.Transform):
    """Crops a random (h, w) box, h and w drawn uniformly from [min_size, min(max_size, image side)] (DETR's
    RandomSizeCrop); boxes are cropped with the image by the v2 kernels."""

    def __init__(self, min_size, max_size):
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs):
        height, width = v2.query_size(flat_inputs)
        h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return dict(top=top, left=left, height=h, width=w)

    def transform(self, inpt, params):
        return self._call_kernel(F.crop, inpt, **params)


def _scaled(sizes, image_scale):
    return [max(1, int(round(s * image_scale))) for s in sizes]


def max_image_size(image_scale=1.0):
    """The longest side any transform of `image_scale` produces (DETR's 1333, scaled)."""
    return _scaled([MAX_SIZE], image_scale)[0]


def make_transforms(image_set, image_scale=1.0):
    """DETR's augmentation (train) or resize (val), every size multiplied by `image_scale`."""
    if image_scale <= 0:
        raise InputError(f"image_scale must be positive, got {image_scale}")
    normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    max_size = max_image_size(image_scale)
    if image_set == "val":
        return v2.Compose([v2.ToImage(), v2.Resize(_scaled([EVAL_SIZE], image_scale)[0], max_size=max_size),
                           normalize])
    if image_set != "train":
        raise ValueError(f"image_set must be 'train' or 'val', got {image_set!r}")
    scales = _scaled(TRAIN_SCALES, image_scale)
    crop_min, crop_max = _scaled(CROP_RANGE, image_scale)
    return v2.Compose([
        v2.ToImage(),
        v2.RandomHorizontalFlip(),
        v2.RandomChoice([
            v2.RandomShortestSize(scales, max_size=max_size),
            v2.Compose([
                v2.RandomShortestSize(_scaled(CROP_RESIZES, image_scale)),
                RandomSizeCrop(crop_min, crop_max),
                v2.RandomShortestSize(scales, max_size=max_size),
            ]),
        ]),
        v2.SanitizeBoundingBoxes(),  # drops boxes the crop reduced to under a pixel, and their labels
        normalize,
    ])


def _check_annotations(coco, ann_file, image_root):
    """Clear errors for what would otherwise fail deep inside a data-loader worker."""
    for ann in coco.dataset.get("annotations", []):
        where = f"{ann_file}: annotation id {ann.get('id')}"
        if ann.get("image_id") not in coco.imgs:
            raise InputError(f"{where} refers to image id {ann.get('image_id')}, which is not in 'images'")
        if ann.get("category_id") not in coco.cats:
            raise InputError(f"{where} has category id {ann.get('category_id')}, which is not in 'categories'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(math.isfinite(v) for v in bbox)):
            raise InputError(f"{where} has bbox {bbox!r}; expected 4 finite numbers [x, y, width, height]")
        if bbox[2] < 0 or bbox[3] < 0:
            raise InputError(f"{where} has a box of negative size: bbox {bbox} (width and height must be >= 0)")
    present = set(os.listdir(image_root))
    missing = [img["file_name"] for img in coco.imgs.values() if img["file_name"] not in present]
    if missing:
        raise InputError(f"{len(missing)} image(s) listed in {ann_file} are not in {image_root}: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")


class CocoDetectionDataset(torch.utils.data.Dataset):
    """`CocoDetection` + transforms.v2, DETR targets. An image that fails to decode is logged and replaced by the
    next index's image (so batch sizes, and hence DDP collectives, stay the same on every rank)."""

    def __init__(self, image_root, ann_file, transforms):
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_dataset = CocoDetection(image_root, ann_file)
        _check_annotations(coco_dataset.coco, ann_file, image_root)
        self.coco = coco_dataset.coco
        self.ids = coco_dataset.ids
        self.image_root = image_root
        self.dataset = wrap_dataset_for_transforms_v2(coco_dataset, target_keys={"image_id", "boxes", "labels",
                                                                                 "iscrowd"})
        self.transforms = transforms

    @property
    def categories(self):
        """{category id: name} of the annotation file."""
        return {c["id"]: c["name"] for c in self.coco.dataset["categories"]}

    @property
    def num_classes(self):
        """Largest category id + 1: the labels are the ids (the official code's convention)."""
        return max(self.coco.cats) + 1

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        for offset in range(len(self)):
            loaded = (index + offset) % len(self)
            try:
                image, target = self.dataset[loaded]
                break
            except (OSError, UnidentifiedImageError, SyntaxError) as error:  # PIL raises all three on bad files
                file_name = self.coco.imgs[self.ids[loaded]]["file_name"]
                logger.warning("skipping image %s that fails to decode (%s): using the next one instead",
                               os.path.join(self.image_root, file_name), error)
        else:
            raise RuntimeError(f"no image under {self.image_root} could be decoded")
        height, width = image.height, image.width
        boxes = target.get("boxes")
        if boxes is None:  # an image without annotations
            boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width))
            labels = torch.zeros(0, dtype=torch.int64)
        else:  # crowd regions are not training targets (COCOeval handles them from the annotation file)
            keep = torch.tensor(target["iscrowd"], dtype=torch.bool).logical_not()
            boxes, labels = tv_tensors.wrap(boxes[keep], like=boxes), target["labels"][keep]
        image, target = self.transforms(image, {"boxes": boxes, "labels": labels})
        size = image.shape[-2:]
        scale = torch.tensor([size[1], size[0], size[1], size[0]], dtype=torch.float32)
        return image, {
            "boxes": box_convert(target["boxes"].as_subclass(torch.Tensor).float(), "xyxy", "cxcywh") / scale,
            "labels": target["labels"].long(),
            "image_id": int(self.ids[loaded]),
            "orig_size": torch.tensor([height, width]),
            "size": torch.tensor(list(size)),
        }


def build_dataset(image_set, coco_path, image_scale=1.0):
    """`coco_path/{image_set}2017` + `coco_path/annotations/instances_{image_set}2017.json`."""
    if not os.path.isdir(coco_path):
        raise FileNotFoundError(f"coco_path {coco_path!r} is not a directory; expected {coco_path}/train2017, "
                                f"{coco_path}/val2017 and {coco_path}/annotations/instances_{{train,val}}2017.json")
    image_root = os.path.join(coco_path, f"{image_set}2017")
    ann_file = os.path.join(coco_path, "annotations", f"instances_{image_set}2017.json")
    for path, kind in ((image_root, "image directory"), (ann_file, "annotation file")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"coco_path {coco_path!r} has no {image_set} {kind}: {path} does not exist")
    return CocoDetectionDataset(image_root, ann_file, make_transforms(image_set, image_scale))


def collate_fn(batch, canvas=None):
    """Pads a list of (image, target) to the largest height and width of the batch, or to `canvas` = (height,
    width) when given (a fixed size, e.g. for a torch.compile'd model: one shape, one graph).

    Returns images (B, 3, H, W) zero-padded at the bottom and right, mask (B, H, W) bool, True on padding, and the
    list of targets (boxes stay relative to each image's own size).
    """
    images, targets = zip(*batch)
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    if canvas is not None:
        if height > canvas[0] or width > canvas[1]:
            raise ValueError(f"collate_fn: an image of {height}x{width} does not fit the canvas {canvas}")
        height, width = canvas
    padded = images[0].new_zeros(len(images), 3, height, width)
    mask = torch.ones(len(images), height, width, dtype=torch.bool)
    for i, image in enumerate(images):
        padded[i, :, : image.shape[1], : image.shape[2]] = image
        mask[i, : image.shape[1], : image.shape[2]] = False
    return padded, mask, list(targets)
