"""A COCO-layout detection dataset generated offline, so training, evaluation and the demo run without downloads.

    python -m models.synthetic DIR --train 400 --val 50 --size 96 --seed 0

writes ``DIR/train2017/*.png``, ``DIR/val2017/*.png`` and ``DIR/annotations/instances_{train,val}2017.json``.
Each image has a textured background (a smooth colour field, pixel noise and clutter: thin lines and small blobs
that are not objects) and 0..max_objects shapes of five classes, each of random size, aspect ratio and colour;
shapes may overlap but every object keeps at least half of its pixels visible. Boxes are exact: each is the
bounding box of the object's visible pixels, computed from its own mask. Category ids are deliberately not
contiguous (1, 3, 4, 7, 9), as in COCO, so the id mapping of the training and evaluation code is exercised.
The same arguments always give the same files.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [
    {"id": 1, "name": "rectangle"},
    {"id": 3, "name": "ellipse"},
    {"id": 4, "name": "triangle"},
    {"id": 7, "name": "cross"},
    {"id": 9, "name": "diamond"},
]
MIN_VISIBLE_FRACTION = 0.5  # an object hidden more than this by later ones is not placed
PLACEMENT_TRIES = 30


def _draw_shape(draw, name, x0, y0, x1, y1, fill):
    """Draws shape `name` filling the pixel box [x0, x1) x [y0, y1) (integers) with `fill`."""
    xr, yr = x1 - 1, y1 - 1  # PIL's coordinates are inclusive
    xm, ym = (x0 + xr) / 2, (y0 + yr) / 2
    if name == "rectangle":
        draw.rectangle([x0, y0, xr, yr], fill=fill)
    elif name == "ellipse":
        draw.ellipse([x0, y0, xr, yr], fill=fill)
    elif name == "triangle":
        draw.polygon([(x0, yr), (xr, yr), (xm, y0)], fill=fill)
    elif name == "cross":
        bar_w, bar_h = max(1, (x1 - x0) // 3), max(1, (y1 - y0) // 3)
        draw.rectangle([x0, ym - bar_h / 2, xr, ym + bar_h / 2], fill=fill)
        draw.rectangle([xm - bar_w / 2, y0, xm + bar_w / 2, yr], fill=fill)
    elif name == "diamond":
        draw.polygon([(xm, y0), (xr, ym), (xm, yr), (x0, ym)], fill=fill)
    else:
        raise ValueError(f"unknown shape {name!r}")


def _background(rng, height, width, clutter):
    """(H, W, 3) uint8: smooth colour field + pixel noise + `clutter` thin lines and small blobs per 64x64 pixels."""
    coarse = rng.uniform(40, 215, size=(3, 4, 3)).astype(np.float32)  # (3, 4, RGB) colour control points
    field = np.asarray(Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR))
    noisy = field.astype(np.float32) + rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    count = int(round(clutter * height * width / 64**2))
    blob = max(2, min(height, width) // 16)  # clutter stays well below the smallest object
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            angle, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.6) * min(height, width)
            draw.line([(x, y), (x + length * np.cos(angle), y + length * np.sin(angle))], fill=colour, width=1)
        else:
            x, y = rng.integers(0, width), rng.integers(0, height)
            draw.ellipse([x, y, x + blob, y + blob], fill=colour)
    return image


def _random_box(rng, height, width, min_frac, max_frac):
    """Integer pixel box (x0, y0, x1, y1) with sides in [min_frac, max_frac] of the shorter image side, aspect
    ratio in [0.5, 2]."""
    short = min(height, width)
    area = (rng.uniform(min_frac, max_frac) * short) ** 2
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))  # w / h
    w = int(np.clip(round(np.sqrt(area * aspect)), 4, width))
    h = int(np.clip(round(np.sqrt(area / aspect)), 4, height))
    x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return x0, y0, x0 + w, y0 + h


def _mask_box(mask):
    """COCO [x, y, w, h] of the nonzero pixels of a (H, W) bool mask (pixel edges: a single pixel is 1 x 1)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def make_image(rng, height, width, max_objects, empty_fraction, clutter, min_frac, max_frac):
    """Returns (PIL image, list of (category_id, [x, y, w, h], visible pixel count))."""
    image = _background(rng, height, width, clutter)
    num_objects = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    visible, full_area, categories = [], [], []  # visible[i]: (H, W) bool mask of object i's visible pixels
    for _ in range(num_objects):
        for _ in range(PLACEMENT_TRIES):
            category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            box = _random_box(rng, height, width, min_frac, max_frac)
            layer = Image.new("L", (width, height), 0)
            _draw_shape(ImageDraw.Draw(layer), category["name"], *box, fill=255)
            mask = np.asarray(layer) > 0
            # The new object is drawn on top: every earlier object loses the pixels it covers.
            if mask.any() and all((m & ~mask).sum() >= MIN_VISIBLE_FRACTION * a for m, a in zip(visible, full_area)):
                break
        else:
            continue  # no placement keeps every object mostly visible: this image gets fewer objects
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        _draw_shape(ImageDraw.Draw(image), category["name"], *box, fill=colour)
        visible = [m & ~mask for m in visible] + [mask]
        full_area.append(int(mask.sum()))
        categories.append(category["id"])
    return image, [(c, _mask_box(m), int(m.sum())) for c, m in zip(categories, visible)]


def write_split(root, split, num_images, size, rng, **image_kwargs):
    """Writes DIR/<split>2017/*.png and DIR/annotations/instances_<split>2017.json; returns the json path."""
    image_dir = os.path.join(root, f"{split}2017")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        # Varied aspect ratios (height = size, width in [0.75, 1.33] x size) so that batches need padding.
        height, width = size, int(round(size * np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))))
        image, objects = make_image(rng, height, width, **image_kwargs)
        file_name = f"{image_id:06d}.png"
        image.save(os.path.join(image_dir, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category_id, bbox, area in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": bbox, "area": float(area), "iscrowd": 0})
    path = os.path.join(root, "annotations", f"instances_{split}2017.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


def generate(root, num_train=400, num_val=50, size=96, seed=0, max_objects=4, empty_fraction=0.1, clutter=1.0,
             min_frac=0.2, max_frac=0.6):
    """Writes the train and val splits under `root`; returns {"train": json path, "val": json path}."""
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
    train_seed, val_seed = np.random.SeedSequence(seed).spawn(2)
    kwargs = dict(max_objects=max_objects, empty_fraction=empty_fraction, clutter=clutter, min_frac=min_frac,
                  max_frac=max_frac)
    return {
        "train": write_split(root, "train", num_train, size, np.random.default_rng(train_seed), **kwargs),
        "val": write_split(root, "val", num_val, size, np.random.default_rng(val_seed), **kwargs),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output directory (COCO layout)")
    parser.add_argument("--train", type=int, default=400, help="number of training images")
    parser.add_argument("--val", type=int, default=50, help="number of validation images")
    parser.add_argument("--size", type=int, default=96, help="image height in pixels (width varies 0.75..1.33x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_objects", type=int, default=4, help="objects per image: 1..max_objects")
    parser.add_argument("--empty_fraction", type=float, default=0.1, help="fraction of images without objects")
    parser.add_argument("--clutter", type=float, default=1.0, help="distractor lines/blobs per 64x64 pixels")
    args = parser.parse_args(argv)
    paths = generate(args.root, args.train, args.val, args.size, args.seed, args.max_objects, args.empty_fraction,
                     args.clutter)
    print(f"wrote {args.train} training and {args.val} validation images to {args.root} "
          f"({paths['train']}, {paths['val']})")


if __name__ == "__main__":
    main()
