"""Train and evaluate SAM-DETR on a COCO-format dataset, with the official `main.py`'s argument names.

    python -m models.train --coco_path DIR --output_dir OUT [--epochs 50 --lr_drop 40 ...]
    python -m models.train --coco_path DIR --output_dir OUT --resume OUT/checkpoint.pth          # continue exactly
    python -m models.train --coco_path DIR --output_dir OUT --eval --resume CKPT                 # evaluate only
    torchrun --nproc_per_node=K -m models.train --coco_path DIR --output_dir OUT ...             # DDP

Every epoch writes OUT/checkpoint.pth (model, optimizer, scheduler, scaler, epoch, arguments, configuration, every
rank's RNG states: models/checkpoint.py; written to a temporary file and renamed, so an interrupted write leaves
the previous one intact), a line of OUT/log.jsonl (losses, lr, epoch time, images/s, the 12 COCO numbers) and
OUT/curves.png.
"""

import argparse
import dataclasses
import functools
import json
import os
import random
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .builders import MODEL_BUILDERS, build_model, resolve_model_kind
from .checkpoint import (
    CHECKPOINT_FORMAT,
    every_rank_rng_state,
    is_ours,
    load_checkpoint,
    load_model_state,
    official_input_proj_groupnorm,
    restore_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_checkpoint,
)
from .config import ALIGNER_IMPLEMENTATIONS, ARCHITECTURE_FIELDS, DetectorConfig, config_from_dict, config_to_dict
from .datasets import InputError, build_dataset, collate_fn, max_image_size
from .distributed import init_distributed, shutdown_distributed
from .engine import COCO_STAT_NAMES, evaluate, train_one_epoch

# Names that moved to models.checkpoint and models.config stay importable from here.
__all__ = ["ARCHITECTURE_FIELDS", "CHECKPOINT_FORMAT", "cli", "config_from_dict", "config_to_dict",
           "freeze_backbone_unless_trained", "get_args_parser", "load_checkpoint", "main", "model_config",
           "official_input_proj_groupnorm", "rng_state", "save_checkpoint", "set_rng_state"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}


def positive_int(text):
    """argparse type: an int >= 1 (argparse names the option in its error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


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
    parser.add_argument("--aligner_implementation", "--ops", dest="aligner_implementation",
                        default=config.aligner_implementation, choices=ALIGNER_IMPLEMENTATIONS,
                        help="the aligner on the samdetr_ops kernels or on the unfused official sequence (--ops: "
                             "its former name)")
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
    parser.add_argument("--print_freq", default=10, type=positive_int,
                        help="steps between reads of the logged losses (and non-finite loss checks) on the host")
    return parser


def model_config(args, num_classes, checkpoint=None):
    """DetectorConfig from the arguments of the same names; an official checkpoint's input projection form
    decides input_proj_groupnorm."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(DetectorConfig)
              if field.name != "num_classes"}
    if checkpoint is not None and not is_ours(checkpoint):
        values["input_proj_groupnorm"] = official_input_proj_groupnorm(checkpoint["model"])
    return DetectorConfig(num_classes=num_classes, **values)


def freeze_backbone_unless_trained(model, lr_backbone):
    """As the official code: the backbone trains only with a positive --lr_backbone (else no gradient flows into
    it at all, which also skips its backward)."""
    if lr_backbone <= 0:
        model.backbone.requires_grad_(False)


# ------------------------------------------------------------------------------------------------- set-up
def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def distribute_and_compile(model, world_size, device, compile):
    """The model as the steps run it: under DDP for world_size > 1, then (compile) compiled."""
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    if compile:
        # In place (the state dict keeps its names), static shapes: the loaders pad every batch to one fixed
        # canvas (see build_loader), so the model compiles once for training and once per evaluation batch size.
        # DETR's random resizes change the shape each step; by default a new shape recompiles the model with
        # dynamic shapes, and those stopped Inductor (torch 2.14, dynamic=True, measured) on a stride comparison it
        # could not decide symbolically ("32*s14*s28 < 32").
        model.compile(dynamic=False)
    return model


def build_optimizer(model, args):
    """(AdamW over the trainable parameters, the backbone's at --lr_backbone and the others at --lr; StepLR
    dividing both by 10 every --lr_drop epochs)."""
    param_groups = [
        {"params": [p for n, p in model.named_parameters()
                    if not n.startswith("backbone.") and p.requires_grad], "lr": args.lr},
        {"params": [p for n, p in model.named_parameters()
                    if n.startswith("backbone.") and p.requires_grad], "lr": args.lr_backbone},
    ]
    # fused: one kernel over all parameters (CPU and CUDA); on the R50 model 63 instead of 190 ms a step (2-core CPU)
    optimizer = torch.optim.AdamW([g for g in param_groups if g["params"]], lr=args.lr,
                                  weight_decay=args.weight_decay, fused=True)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop)


def build_loader(dataset, shuffle, generator, args, rank, world_size, device):
    """DistributedSampler also for one process: the same --seed then gives the same global batches for any
    number of processes. The generator makes the workers' seeds a function of (seed, epoch) only."""
    # --compile: every batch padded to the largest image any transform of --image_scale produces (square), so
    # that one input shape serves all steps. Boxes stay relative to each image's valid region and the mask covers
    # the rest, as in any padded DETR batch; the cost is the padded pixels' compute.
    canvas = (max_image_size(args.image_scale),) * 2 if args.compile else None
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=args.seed)
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=shuffle,
                      collate_fn=functools.partial(collate_fn, canvas=canvas), num_workers=args.num_workers,
                      generator=generator, persistent_workers=False, pin_memory=device.type == "cuda")


def evaluate_only(run_eval, checkpoint, args, rank):
    """--eval: one evaluation; rank 0 prints COCOeval's table and writes OUT/eval.json."""
    if checkpoint is None:
        print("warning: --eval without --resume evaluates a randomly initialised model", file=sys.stderr)
    test_stats = run_eval()
    if rank == 0:
        print(test_stats["table"], end="")
        if args.output_dir:
            with open(os.path.join(args.output_dir, "eval.json"), "w") as f:
                json.dump({k: v for k, v in test_stats.items() if k != "table"}
                          | {"checkpoint": args.resume}, f, indent=1)
    return test_stats


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


def log_epoch(out_dir, epoch, train_stats, test_stats):
    """Appends the epoch's line to OUT/log.jsonl and redraws OUT/curves.png."""
    row = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()},
           **{f"test_{k}": test_stats[k] for k in COCO_STAT_NAMES}}
    with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    write_curves(os.path.join(out_dir, "log.jsonl"), os.path.join(out_dir, "curves.png"))


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
    """Trains as the arguments say (--eval: evaluates --resume) and returns the last evaluation's statistics (None
    on ranks other than 0). `args` is only read: what the run resolves (the model kind, the device, an official
    checkpoint's input projection) goes into the checkpoints' "args"."""
    rank, world_size, device = init_distributed(args.device)
    seed_everything(args.seed + rank)
    if args.output_dir and rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
    dataset_val = build_dataset("val", args.coco_path, args.image_scale)
    dataset_train = None if args.eval else build_dataset("train", args.coco_path, args.image_scale)
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    kind = resolve_model_kind(args.model, checkpoint, args.resume)
    cfg = model_config(args, (dataset_train or dataset_val).num_classes, checkpoint)

    model, criterion, postprocess = build_model(kind, cfg)
    freeze_backbone_unless_trained(model, args.lr_backbone)
    model.to(device)
    if checkpoint is not None:
        load_model_state(model, checkpoint, cfg, args.resume)
    running_model = distribute_and_compile(model, world_size, device, args.compile)
    optimizer, lr_scheduler = build_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    make_loader = functools.partial(build_loader, args=args, rank=rank, world_size=world_size, device=device)
    val_generator = torch.Generator()
    data_loader_val = make_loader(dataset_val, False, val_generator)
    amp_dtype, progress = AMP_DTYPES[args.amp], not args.quiet

    def run_eval():
        val_generator.manual_seed(args.seed)
        return evaluate(running_model, postprocess, data_loader_val, dataset_val.coco, device, amp_dtype, progress)

    if args.eval:
        test_stats = evaluate_only(run_eval, checkpoint, args, rank)
        shutdown_distributed(world_size)
        return test_stats

    start_epoch = args.start_epoch
    if checkpoint is not None and is_ours(checkpoint) and "optimizer" in checkpoint:
        start_epoch = restore_training_state(checkpoint, optimizer, lr_scheduler, scaler, rank, world_size,
                                             args.resume)
    train_generator = torch.Generator()
    data_loader_train = make_loader(dataset_train, True, train_generator)
    run_args = vars(args) | {"model": kind, "device": str(device), "input_proj_groupnorm": cfg.input_proj_groupnorm}
    if rank == 0:
        n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"SAM-DETR {config_to_dict(cfg)}; {n_parameters} trainable parameters; {len(dataset_train)} "
              f"training and {len(dataset_val)} validation images; {world_size} process(es) on {device}",
              file=sys.stderr)
    test_stats = None
    for epoch in range(start_epoch, args.epochs):
        data_loader_train.sampler.set_epoch(epoch)
        train_generator.manual_seed(args.seed * 1000 + epoch)
        train_stats = train_one_epoch(running_model, criterion, data_loader_train, optimizer, device, epoch,
                                      args.clip_max_norm, scaler, amp_dtype, progress,
                                      getattr(args, "print_freq", 10))
        lr_scheduler.step()
        test_stats = run_eval()
        # Every rank's RNG states, captured where the next epoch begins, so that --resume continues exactly.
        rng_states = every_rank_rng_state(world_size)
        if rank == 0 and args.output_dir:
            save_checkpoint(training_checkpoint(model, optimizer, lr_scheduler, scaler, epoch, run_args, cfg,
                                                dataset_train.categories, rng_states),
                            os.path.join(args.output_dir, "checkpoint.pth"))
            log_epoch(args.output_dir, epoch, train_stats, test_stats)
        if rank == 0:
            print(_format_epoch(epoch, train_stats, test_stats), file=sys.stderr, flush=True)
    if rank == 0 and test_stats is not None:
        print(test_stats["table"], end="")
    shutdown_distributed(world_size)
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
