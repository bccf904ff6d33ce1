"""Draw a trained SAM-DETR's detections on images.

    python -m models.predict IMAGE... --checkpoint OUT/checkpoint.pth --out DIR --threshold 0.5

writes DIR/<image name>.png with every detection scoring at least --threshold drawn as a box labelled with its
class name (from the checkpoint's dataset) and score. The image goes through the evaluation transform of the run
that saved the checkpoint (its --image_scale), and the boxes are drawn at the file's own resolution.
"""

import argparse
import os
import sys

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from .builders import build_model, checkpoint_model_kind
from .checkpoint import is_ours, load_checkpoint
from .config import ALIGNER_IMPLEMENTATIONS, config_from_dict
from .datasets import InputError, collate_fn, make_transforms

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990")


def load_detector(checkpoint_path, device, aligner_implementation="fused"):
    """(model in eval mode, postprocess, {category id: name}, image_scale) from a checkpoint of models.train."""
    checkpoint = load_checkpoint(checkpoint_path)
    if not is_ours(checkpoint):
        raise InputError(f"checkpoint {checkpoint_path} was not saved by models.train: it has no model "
                         "configuration or class names (evaluate official checkpoints with models.train --eval)")
    cfg = config_from_dict(checkpoint["config"], backbone_weights=None,
                           aligner_implementation=aligner_implementation)
    model, _, postprocess = build_model(checkpoint_model_kind(checkpoint), cfg)  # sam_detr, dab_detr, ...
    model.load_state_dict(checkpoint["model"])
    categories = {int(k): v for k, v in checkpoint["categories"].items()}
    return model.to(device).eval(), postprocess, categories, checkpoint["args"].get("image_scale", 1.0)


@torch.no_grad()
def predict(model, postprocess, image, image_scale, device):
    """image (3, H, W) uint8 -> {"scores", "labels", "boxes" xyxy in the image's pixels}, sorted by score."""
    tensor = make_transforms("val", image_scale)(image)
    images, mask, _ = collate_fn([(tensor, {})])
    outputs = model(images.to(device), mask.to(device))
    return postprocess(outputs, torch.tensor([list(image.shape[-2:])], device=device))[0]


def draw(image, detection, categories, threshold):
    """image (3, H, W) uint8 with the detections scoring >= threshold drawn on it."""
    keep = detection["scores"] >= threshold
    labels = detection["labels"][keep].tolist()
    names = [f"{categories.get(label, label)} {score:.2f}" for label, score in
             zip(labels, detection["scores"][keep].tolist())]
    colours = [PALETTE[label % len(PALETTE)] for label in labels]
    boxes = detection["boxes"][keep].float().cpu()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.shape[-1] - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.shape[-2] - 1)
    return draw_bounding_boxes(image, boxes, names, colors=colours, width=2)


def main(argv=None):
    parser = argparse.ArgumentParser("python -m models.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint saved by models.train")
    parser.add_argument("--out", required=True, help="output directory for the drawn PNGs")
    parser.add_argument("--threshold", type=float, default=0.5, help="lowest score drawn")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--aligner_implementation", "--ops", dest="aligner_implementation", default="fused",
                        choices=ALIGNER_IMPLEMENTATIONS, help="the aligner's (--ops: its former name)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    try:
        model, postprocess, categories, image_scale = load_detector(args.checkpoint, device,
                                                                    args.aligner_implementation)
    except (FileNotFoundError, InputError) as error:
        sys.exit(f"error: {error}")
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        try:
            with Image.open(path) as file:
                image = F.pil_to_tensor(file.convert("RGB"))  # (3, H, W) uint8
        except (OSError, UnidentifiedImageError) as error:
            print(f"skipping {path}: cannot decode it ({error})", file=sys.stderr)
            continue
        detection = predict(model, postprocess, image, image_scale, device)
        out_path = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + ".png")
        F.to_pil_image(draw(image, detection, categories, args.threshold).cpu()).save(out_path)
        kept = int((detection["scores"] >= args.threshold).sum())
        print(f"{path}: {kept} detection(s) >= {args.threshold} -> {out_path}")


if __name__ == "__main__":
    main()
