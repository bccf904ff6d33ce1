"""A second offline COCO-layout dataset, made by the `kwcoco` package's toy-shapes generator (the one behind
``kwcoco.CocoDataset.demo('shapes8')``), independent of models/synthetic.py.

    python -m models.kwcoco_demo DIR --train 100 --val 25 --size 96 --seed 0

writes ``DIR/train2017/*.png``, ``DIR/val2017/*.png`` and ``DIR/annotations/instances_{train,val}2017.json``.
kwcoco draws non-overlapping toy objects of three categories (star, superstar, eff) on a noisy grey background,
up to ~15 small objects per image; its boxes are the xywh boxes of the patches it pastes. kwcoco's 'background'
category (id 0) has no annotations and is dropped, so every category id is >= 1 (kwcoco's own ids, 3, 6, 7, are
kept). The same arguments always give the same files. Needs ``pip install kwcoco opencv-python-headless``.
"""

import argparse
import json
import os
import shutil
import tempfile

import numpy as np


def write_split(root, split, num_images, size, seed):
    """Renders `num_images` kwcoco toy images of `size` x `size` pixels; writes DIR/<split>2017/*.png and
    DIR/annotations/instances_<split>2017.json; returns the json path."""
    from kwcoco.demo.toydata_image import demodata_toy_dset

    image_dir = os.path.join(root, f"{split}2017")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with tempfile.TemporaryDirectory() as bundle:  # kwcoco writes its own bundle; we copy the PNGs out of it
        # demodata_toy_dset passes `rng` to its boxes and pixels, but its CategoryPatterns (category choice and
        # colours) draws from numpy's global generator: seed that too, restoring it afterwards.
        global_state = np.random.get_state()
        np.random.seed(seed)
        try:
            kw_dataset = demodata_toy_dset(image_size=(size, size), n_imgs=num_images, rng=seed,
                                           bundle_dpath=bundle, use_cache=False, verbose=0)
        finally:
            np.random.set_state(global_state)
        images, annotations = [], []
        for new_id, kw_image in enumerate(sorted(kw_dataset.dataset["images"], key=lambda im: im["id"]), start=1):
            file_name = f"{new_id:06d}.png"
            shutil.copyfile(kw_dataset.get_image_fpath(kw_image["id"]), os.path.join(image_dir, file_name))
            images.append({"id": new_id, "file_name": file_name, "height": kw_image["height"],
                           "width": kw_image["width"]})
            for kw_ann in kw_dataset.annots(gid=kw_image["id"]).objs:
                x, y, w, h = (float(v) for v in kw_ann["bbox"])
                annotations.append({"id": len(annotations) + 1, "image_id": new_id,
                                    "category_id": int(kw_ann["category_id"]), "bbox": [x, y, w, h],
                                    "area": w * h, "iscrowd": 0})
    used = {a["category_id"] for a in annotations}
    if 0 in used:
        raise RuntimeError("kwcoco annotated its 'background' category (id 0); the id mapping needs updating")
    categories = [{"id": int(c["id"]), "name": c["name"]} for c in kw_dataset.dataset["categories"] if c["id"] != 0]
    path = os.path.join(root, "annotations", f"instances_{split}2017.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def generate(root, num_train=100, num_val=25, size=96, seed=0):
    """Writes the train and val splits under `root` (different kwcoco seeds derived from `seed`); returns
    {"train": json path, "val": json path}."""
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    train_seed, val_seed = (int(s.generate_state(1)[0]) % 2**31 for s in np.random.SeedSequence(seed).spawn(2))
    return {"train": write_split(root, "train", num_train, size, train_seed),
            "val": write_split(root, "val", num_val, size, val_seed)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output directory (COCO layout)")
    parser.add_argument("--train", type=int, default=100, help="number of training images")
    parser.add_argument("--val", type=int, default=25, help="number of validation images")
    parser.add_argument("--size", type=int, default=96, help="image width and height in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = generate(args.root, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} training and {args.val} validation images to {args.root} "
          f"({paths['train']}, {paths['val']})")


if __name__ == "__main__":
    main()
