"""One training epoch and one COCO evaluation (pycocotools' COCOeval), single-process or under DDP.

Loaders yield `(images (B, 3, H, W), mask (B, H, W) True on padding, targets)` as `models.datasets.collate_fn`
builds them; targets are dicts with "boxes" (K, 4) cxcywh in [0, 1], "labels" (K,), "image_id", "orig_size".
"""

import contextlib
import io
import math
import resource
import time

import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert
from tqdm import tqdm

# The 12 numbers of COCOeval.stats, in order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def is_main_process():
    return not is_distributed() or dist.get_rank() == 0


def _to_device(targets, device):
    return [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in targets]


def _to_float32(outputs):
    """The model's outputs (nested dicts/lists of tensors) in float32: the matcher and the losses run outside
    autocast, since focal-loss and GIoU terms lose too much in 16-bit."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float32(v) for v in outputs)
    return outputs


class _DeviceLog:
    """The logged losses of the training steps, summed on the device, read on the host (and averaged over the DDP
    ranks) only by flush(): once every print_freq steps, so that logging adds no per-step sync."""

    def __init__(self):
        self.names, self.window, self.window_steps, self.sums, self.steps = None, None, 0, {}, 0

    def add(self, loss_dict, weight_dict, loss):
        if self.names is None:
            self.names = [k for k in loss_dict if k in weight_dict] + ["loss"]
        values = torch.stack([loss_dict[k].detach().float() for k in self.names[:-1]] + [loss.detach().float()])
        self.window = values if self.window is None else self.window + values
        self.window_steps += 1

    def flush(self, epoch):
        """Adds the steps since the last flush to the sums (one device-to-host read); raises FloatingPointError if
        their loss was not finite."""
        if not self.window_steps:
            return
        window = self.window
        if is_distributed():
            window = window.clone()
            dist.all_reduce(window)
            window = window / dist.get_world_size()
        values = dict(zip(self.names, window.tolist()))
        first, self.steps = self.steps, self.steps + self.window_steps
        self.window, self.window_steps = None, 0
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"epoch {epoch}, steps {first}-{self.steps - 1}: loss is not finite "
                                     f"(sum {values['loss']}), stopping training; summed losses: {values}")
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self):
        """Per-layer auxiliary losses (loss_ce_0, ...) stay out: the last layer's and the total suffice."""
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()
                if k == "loss" or not k.rsplit("_", 1)[-1].isdigit()}


def peak_memory_mb(device):
    """Peak memory so far: allocated by tensors on CUDA, resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def train_one_epoch(model, criterion, loader, optimizer, device, epoch, clip_max_norm=0.0, scaler=None,
                    amp_dtype=None, progress=True, print_freq=10):
    """Trains one pass over `loader`. `amp_dtype` (torch.bfloat16 / torch.float16 / None) runs the model under
    autocast; `scaler` (a torch.amp.GradScaler, for float16) scales the loss. Returns {"loss", each weighted loss
    of the last decoder layer, "lr", "lr_backbone", "epoch_time", "images_per_s", "steps", "peak_memory_mb"}: means
    over the epoch and the ranks (images/s counts every rank's images; the memory is this rank's).
    The losses are summed on the device and read every `print_freq` steps (and at the end), when the progress bar
    is updated and a non-finite loss stops training (FloatingPointError): no step waits for the device to log."""
    model.train()
    criterion.train()
    weight_dict = criterion.weight_dict
    log, steps, images_seen = _DeviceLog(), 0, 0
    world_size = dist.get_world_size() if is_distributed() else 1
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (progress and is_main_process()), dynamic_ncols=True,
               leave=False)
    for images, mask, targets in bar:
        images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        targets = _to_device(targets, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(images, mask)
        loss_dict = criterion(_to_float32(outputs), targets)
        loss = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
        log.add(loss_dict, weight_dict, loss)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
        else:
            loss.backward()
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

        steps += 1
        images_seen += images.shape[0] * world_size
        if steps % print_freq == 0:
            log.flush(epoch)
            bar.set_postfix(loss=f"{log.sums['loss'] / log.steps:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{images_seen / (time.perf_counter() - start):.1f}")
    log.flush(epoch)
    bar.close()
    elapsed = time.perf_counter() - start
    stats = log.means()
    stats.update(lr=optimizer.param_groups[0]["lr"], epoch_time=elapsed, images_per_s=images_seen / elapsed,
                 steps=steps, peak_memory_mb=peak_memory_mb(device))
    if len(optimizer.param_groups) > 1:
        stats["lr_backbone"] = optimizer.param_groups[1]["lr"]
    return stats


def predictions_to_coco(predictions, image_ids, category_ids):
    """postprocess outputs (dicts of "scores", "labels", "boxes" xyxy pixels) -> COCO result dicts
    {"image_id", "category_id", "bbox": [x, y, w, h], "score"}; labels that are not a category of the dataset are
    dropped (COCOeval would ignore them anyway)."""
    results = []
    for image_id, prediction in zip(image_ids, predictions):
        boxes = box_convert(prediction["boxes"].float().cpu(), "xyxy", "xywh").tolist()
        for box, score, label in zip(boxes, prediction["scores"].float().cpu().tolist(),
                                     prediction["labels"].cpu().tolist()):
            if label in category_ids:
                results.append({"image_id": int(image_id), "category_id": int(label), "bbox": box,
                                "score": score})
    return results


def coco_evaluate(coco_gt, results, image_ids=None):
    """COCOeval (bbox) of `results` against `coco_gt` on `image_ids` (default: every image of coco_gt).
    Returns (stats: the 12 numbers as a list, table: COCOeval's printed summary)."""
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else set(image_ids))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes rejects an empty list; an empty result set is still a valid (all-zero) evaluation
            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()) as table:
        evaluator.summarize()
    return [float(s) for s in evaluator.stats], table.getvalue()


@torch.no_grad()
def evaluate(model, postprocess, loader, coco_gt, device, amp_dtype=None, progress=False):
    """Runs the model over `loader`, gathers the detections of every rank on rank 0 and evaluates them there.
    Returns {"coco_eval_bbox": [12 numbers], "AP": ..., "AP50": ..., ..., "table": COCOeval's summary,
    "num_images"} on rank 0, None on the other ranks."""
    model.eval()
    category_ids = set(coco_gt.getCatIds())
    per_image = []  # (image_id, its COCO results)
    for images, mask, targets in tqdm(loader, desc="eval", disable=not (progress and is_main_process()),
                                      dynamic_ncols=True, leave=False):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(images.to(device, non_blocking=True), mask.to(device, non_blocking=True))
        # Boxes are relative to each image's own (unpadded) size, so scaling by the file's size undoes the resize.
        orig_sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        predictions = postprocess(_to_float32(outputs), orig_sizes)
        for target, prediction in zip(targets, predictions):
            per_image.append((target["image_id"], predictions_to_coco([prediction], [target["image_id"]],
                                                                      category_ids)))
    if is_distributed():
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(per_image, gathered, dst=0)
        if dist.get_rank() != 0:
            return None
        per_image = [item for rank_items in gathered for item in rank_items]
    # DistributedSampler repeats images to even out the ranks, and an undecodable image is replaced by the next
    # one: each image's detections count once.
    unique = dict(reversed(per_image))  # the first occurrence of each image id wins
    stats, table = coco_evaluate(coco_gt, [r for results in unique.values() for r in results], unique)
    return {"coco_eval_bbox": stats, **dict(zip(COCO_STAT_NAMES, stats)), "table": table,
            "num_images": len(unique)}
