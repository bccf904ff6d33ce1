"""Train and evaluate SAM-DETR on a COCO-format dataset, with the official `main.py`'s argument names.

    python -m models.train --coco_path DIR --output_dir OUT [--epochs 50 --lr_drop 40 ...]
    python -m models.train --coco_path DIR --output_dir OUT --resume OUT/checkpoint.pth          # continue exactly
    python -m models.train --coco_path DIR --output_dir OUT --eval --resume CKPT                 # evaluate only
    torchrun --nproc_per_node=K -m models.train --coco_path DIR --output_dir OUT ...             # DDP

Every epoch writes OUT/checkpoint.pth (model, optimizer, scheduler, scaler, epoch, arguments, every rank's RNG
states; written to a temporary file and renamed, so an interrupted write leaves the previous one intact), a line
of OUT/log.jsonl (losses, lr, epoch time, images/s, the 12 COCO numbers) and OUT/curves.png.
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from .builders import MODEL_BUILDERS, build_model, resolve_model_kind
from .config import ALIGNER_OPS, ARCHITECTURE_FIELDS, DetectorConfig, config_from_dict, config_to_dict
from .datasets import InputError, build_dataset, collate_fn, max_image_size
from .engine import COCO_STAT_NAMES, evaluate, train_one_epoch

CHECKPOINT_FORMAT = "samdetr_ops.models.train/1"
# Names that moved to models.config, importable from here as before.
__all__ = ["ARCHITECTURE_FIELDS", "CHECKPOINT_FORMAT", "cli", "config_from_dict", "config_to_dict",
           "freeze_backbone_unless_trained", "get_args_parser", "load_checkpoint", "main", "model_config",
           "save_checkpoint"]


def get_args_parser():
    parser = argparse.ArgumentParser("SAM-DETR training and evaluation", add_help=False)
    parser.add_argument("--lr", default=1e-4, type=float)
    parser.add_argument("--lr_backbone", default=1e-5, type=float, help="0 freezes the whole backbone")
    parser.add_argument("--batch_size", default=2, type=int, help="images per process")
    parser.add_argument("--weight_decay", default=1e-4, type=float)
    parser.add_argument("--epochs", default=50, type=int)
    parser.add_argument("--lr_drop", default=40, type=int)
    parser.add_argument("--clip_max_norm", default=0.1, type=float, help="gradient clipping max norm (0: off)")
    parser.add_argument("--model", default=None, choices=sorted(MODEL_BUILDERS),
                        help="detector (default: the --resume checkpoint's, else sam_detr)")
    # Model, loss and matcher: DetectorConfig's fields, with its (the official) defaults
    config = DetectorConfig()
    for name in ("enc_layers", "dec_layers", "dim_feedforward", "hidden_dim", "nheads", "num_queries"):
        parser.add_argument(f"--{name}", default=getattr(config, name), type=int)
    parser.add_argument("--dropout", default=config.dropout, type=float)
    parser.add_argument("--dilation", action="store_true", help="DC5: dilation instead of stride in layer4")
    parser.add_argument("--smca", action="store_true", help="SMCA's Gaussian prior in the cross-attention")
    parser.add_argument("--no_input_proj_groupnorm", dest="input_proj_groupnorm", action="store_false",
                        help="input projection without its GroupNorm (the official long-schedule form)")
    parser.add_argument("--no_aux_loss", dest="aux_loss", action="store_false",
                        help="loss on the last decoder layer only")
    parser.add_argument("--backbone", default=config.backbone, choices=("resnet18", "resnet34", "resnet50"),
                        help="torchvision ResNet (the official model: resnet50; dilation needs it)")
    parser.add_argument("--backbone_norm", default=config.backbone_norm, choices=("frozen", "batch"),
                        help="frozen BatchNorm (official, for pretrained weights) or trainable BatchNorm (for a "
                             "backbone trained from scratch)")
    parser.add_argument("--backbone_weights", default=config.backbone_weights,
                        help="local torchvision state dict of --backbone")
    parser.add_argument("--ops", default=config.ops, choices=ALIGNER_OPS,
                        help="aligner ops: samdetr_ops kernels or the unfused official sequence")
    # Matcher costs, loss weights (every decoder layer's loss gets its base weight), focal loss parameters
    for name in ("set_cost_class", "set_cost_bbox", "set_cost_giou", "cls_loss_coef", "bbox_loss_coef",
                 "giou_loss_coef", "focal_alpha", "focal_gamma"):
        parser.add_argument(f"--{name}", default=getattr(config, name), type=float)
    # Data
    parser.add_argument("--coco_path", type=str, default="data/coco")
    parser.add_argument("--image_scale", default=1.0, type=float,
                        help="multiplies every augmentation and evaluation size (0.25: 120..200 px training)")
    parser.add_argument("--num_workers", default=2, type=int)
    # Run
    parser.add_argument("--output_dir", default="", help="where checkpoints and logs go; empty: nothing saved")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", default=42, type=int)
    parser.add_argument("--resume", default="", help="checkpoint to continue from (or to evaluate with --eval)")
    parser.add_argument("--start_epoch", default=0, type=int)
    parser.add_argument("--eval", action="store_true", help="evaluate --resume on the val split and stop")
    parser.add_argument("--amp", default=None, choices=("bf16", "fp16"),
                        help="autocast dtype (fp16 adds a GradScaler)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (every batch padded to one fixed size)")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    return parser


def model_config(args, num_classes):
    """DetectorConfig from the arguments of the same names."""
    return DetectorConfig(num_classes=num_classes, **{field.name: getattr(args, field.name)
                                                      for field in dataclasses.fields(DetectorConfig)
                                                      if field.name != "num_classes"})


def freeze_backbone_unless_trained(model, lr_backbone):
    """As the official code: the backbone trains only with a positive --lr_backbone (else no gradient flows into
    it at all, which also skips its backward)."""
    if lr_backbone <= 0:
        model.backbone.requires_grad_(False)


# ----------------------------------------------------------------------------------------------- distributed
def init_distributed(args):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: NCCL on CUDA, gloo on CPU. Returns (rank, world_size)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if args.device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo",
                            timeout=datetime.timedelta(minutes=30))
    return rank, world_size


# ------------------------------------------------------------------------------------------------------ RNG
def rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = list(state["numpy"])
    numpy_state[1] = np.asarray(numpy_state[1], dtype=np.uint32)
    np.random.set_state(tuple(numpy_state))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(checkpoint, path):
    """Writes `path` atomically: a temporary file in the same directory, flushed to disk, then renamed."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    """Reads a checkpoint saved by this script or by the official code (no code runs: weights_only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # the official checkpoints' 'args'
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        raise InputError(f"checkpoint {path} cannot be read, it is truncated or not a torch checkpoint: "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise InputError(f"checkpoint {path} has no 'model' entry: not a SAM-DETR checkpoint")
    return checkpoint


def _load_model_state(model, checkpoint, cfg, path):
    """Loads our checkpoints, and the official ones through models.convert (their 'model' entry has the official
    key names; their input projection form decides cfg.input_proj_groupnorm)."""
    state_dict = checkpoint["model"]
    if checkpoint.get("format") == CHECKPOINT_FORMAT:
        saved = checkpoint["config"]
        differ = [f"{k}: checkpoint {saved[k]!r}, arguments {getattr(cfg, k)!r}" for k in ARCHITECTURE_FIELDS
                  if k in saved and saved[k] != getattr(cfg, k)]
        if differ:
            raise InputError(f"checkpoint {path} was saved by a different model configuration ("
                             + "; ".join(differ) + "); pass the same model arguments")
    else:
        from .convert import convert_official_state_dict
        try:
            state_dict = convert_official_state_dict(state_dict, cfg)
        except (KeyError, ValueError) as error:  # a variant mismatch names the DetectorConfig field to change
            raise InputError(f"checkpoint {path} (official layout) cannot be converted: {error}") from error
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:  # lists every missing/unexpected key and shape mismatch
        raise InputError(f"checkpoint {path} does not match the model built from the arguments: {error}") from error


def official_input_proj_groupnorm(state_dict):
    """Whether an official state dict has the GroupNorm input projection (official: input_proj.0 = Sequential(conv,
    GroupNorm), so the norm's weight is input_proj.0.1.weight)."""
    return "input_proj.0.1.weight" in state_dict


# ----------------------------------------------------------------------------------------------- logs, plots
def write_curves(log_path, png_path):
    """Loss and AP per epoch from log.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(log_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for name in ("AP", "AP50", "AP75"):
        ax_ap.plot(epochs, [r.get(f"test_{name}", float("nan")) for r in rows], marker="o", label=name)
    ax_ap.set_xlabel("epoch")
    ax_ap.set_ylabel("COCO bbox")
    ax_ap.set_ylim(0, 1)
    ax_ap.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _format_epoch(epoch, train_stats, test_stats):
    parts = [f"epoch {epoch}"]
    if train_stats:
        parts.append(f"loss {train_stats['loss']:.4f} lr {train_stats['lr']:.2e} "
                     f"{train_stats['images_per_s']:.1f} img/s {train_stats['epoch_time']:.0f}s "
                     f"peak {train_stats['peak_memory_mb']:.0f} MiB")
    if test_stats:
        parts.append(f"AP {test_stats['AP']:.3f} AP50 {test_stats['AP50']:.3f}")
    return " | ".join(parts)


# -------------------------------------------------------------------------------------------------------- main
def main(args):
    rank, world_size = init_distributed(args)
    distributed = world_size > 1
    device = torch.device(args.device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    torch.manual_seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    random.seed(args.seed + rank)
    out_dir = args.output_dir
    if out_dir and rank == 0:
        os.makedirs(out_dir, exist_ok=True)

    dataset_val = build_dataset("val", args.coco_path, args.image_scale)
    dataset_train = None if args.eval else build_dataset("train", args.coco_path, args.image_scale)
    reference_set = dataset_train or dataset_val
    categories = reference_set.categories
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    args.model = resolve_model_kind(args.model, checkpoint, args.resume)   # recorded in the checkpoints' args
    if checkpoint is not None and checkpoint.get("format") != CHECKPOINT_FORMAT:
        # An official checkpoint: its input projection form decides the architecture.
        args.input_proj_groupnorm = official_input_proj_groupnorm(checkpoint["model"])
    cfg = model_config(args, reference_set.num_classes)

    model, criterion, postprocess = build_model(args.model, cfg)
    freeze_backbone_unless_trained(model, args.lr_backbone)
    model.to(device)
    if checkpoint is not None:
        _load_model_state(model, checkpoint, cfg, args.resume)
    model_without_ddp = model
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    if args.compile:
        # In place (the state dict keeps its names), static shapes: the loaders pad every batch to one fixed
        # canvas (see `collate` below), so the model compiles once for training and once per evaluation batch size.
        # DETR's random resizes change the shape each step; by default a new shape recompiles the model with
        # dynamic shapes, and those stopped Inductor (torch 2.14, dynamic=True, measured) on a stride comparison it
        # could not decide symbolically ("32*s14*s28 < 32").
        model.compile(dynamic=False)

    param_groups = [
        {"params": [p for n, p in model_without_ddp.named_parameters()
                    if not n.startswith("backbone.") and p.requires_grad], "lr": args.lr},
        {"params": [p for n, p in model_without_ddp.named_parameters()
                    if n.startswith("backbone.") and p.requires_grad], "lr": args.lr_backbone},
    ]
    # fused: one kernel over all parameters (CPU and CUDA); on the R50 model 63 instead of 190 ms a step (2-core CPU)
    optimizer = torch.optim.AdamW([g for g in param_groups if g["params"]], lr=args.lr,
                                  weight_decay=args.weight_decay, fused=True)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None

    # --compile: every batch padded to the largest image any transform of --image_scale produces (square), so
    # that one input shape serves all steps. Boxes stay relative to each image's valid region and the mask covers
    # the rest, as in any padded DETR batch; the cost is the padded pixels' compute.
    canvas = (max_image_size(args.image_scale),) * 2 if args.compile else None
    collate = functools.partial(collate_fn, canvas=canvas)

    def loader(dataset, shuffle, generator):
        # DistributedSampler also for one process: the same --seed then gives the same global batches for any
        # number of processes. The generator makes the workers' seeds a function of (seed, epoch) only.
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=args.seed)
        return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=shuffle,
                          collate_fn=collate, num_workers=args.num_workers, generator=generator,
                          persistent_workers=False, pin_memory=device.type == "cuda")

    val_generator = torch.Generator()
    data_loader_val = loader(dataset_val, False, val_generator)
    progress = not args.quiet

    def run_eval():
        val_generator.manual_seed(args.seed)
        return evaluate(model, postprocess, data_loader_val, dataset_val.coco, device, amp_dtype, progress)

    if args.eval:
        if checkpoint is None:
            print("warning: --eval without --resume evaluates a randomly initialised model", file=sys.stderr)
        test_stats = run_eval()
        if rank == 0:
            print(test_stats["table"], end="")
            if out_dir:
                with open(os.path.join(out_dir, "eval.json"), "w") as f:
                    json.dump({k: v for k, v in test_stats.items() if k != "table"}
                              | {"checkpoint": args.resume}, f, indent=1)
        if distributed:
            dist.destroy_process_group()
        return test_stats

    start_epoch = args.start_epoch
    if checkpoint is not None and checkpoint.get("format") == CHECKPOINT_FORMAT and "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"] + 1
        states = checkpoint.get("rng", [])
        if len(states) == world_size:
            set_rng_state(states[rank])
        elif rank == 0:
            print(f"warning: {args.resume} holds RNG states of {len(states)} processes, this run has "
                  f"{world_size}: the run continues but not bit-exactly", file=sys.stderr)

    train_sampler_generator = torch.Generator()
    data_loader_train = loader(dataset_train, True, train_sampler_generator)
    if rank == 0:
        n_parameters = sum(p.numel() for p in model_without_ddp.parameters() if p.requires_grad)
        print(f"SAM-DETR {config_to_dict(cfg)}; {n_parameters} trainable parameters; {len(dataset_train)} "
              f"training and {len(dataset_val)} validation images; {world_size} process(es) on {device}",
              file=sys.stderr)
    test_stats = None
    for epoch in range(start_epoch, args.epochs):
        data_loader_train.sampler.set_epoch(epoch)
        train_sampler_generator.manual_seed(args.seed * 1000 + epoch)
        train_stats = train_one_epoch(model, criterion, data_loader_train, optimizer, device, epoch,
                                      args.clip_max_norm, scaler, amp_dtype, progress)
        lr_scheduler.step()
        test_stats = run_eval()
        # Every rank's RNG states, captured where the next epoch begins, so that --resume continues exactly.
        states = [None] * world_size
        if distributed:
            dist.all_gather_object(states, rng_state())
        else:
            states[0] = rng_state()
        if rank == 0 and out_dir:
            save_checkpoint({
                "format": CHECKPOINT_FORMAT, "model": model_without_ddp.state_dict(),
                "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
                "args": vars(args), "config": config_to_dict(cfg), "categories": categories, "rng": states,
            }, os.path.join(out_dir, "checkpoint.pth"))
            row = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()},
                   **{f"test_{k}": test_stats[k] for k in COCO_STAT_NAMES}}
            with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            write_curves(os.path.join(out_dir, "log.jsonl"), os.path.join(out_dir, "curves.png"))
        if rank == 0:
            print(_format_epoch(epoch, train_stats, test_stats), file=sys.stderr, flush=True)
    if rank == 0 and test_stats is not None:
        print(test_stats["table"], end="")
    if distributed:
        dist.destroy_process_group()
    return test_stats


def cli(argv=None):
    parser = argparse.ArgumentParser("python -m models.train", parents=[get_args_parser()],
                                     description=__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    try:
        main(args)
    except (FileNotFoundError, InputError) as error:
        # Bad input (paths, annotation files, checkpoints): the message names what is wrong; no traceback.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
