"""The checkpoints of models.train: what they hold, how they are written (atomically) and read back (ours and the
official SAM-DETR ones), and the RNG states that let --resume continue a run exactly.

Format CHECKPOINT_FORMAT, "models.checkpoint/2" (named after this module), a dict:
    "format", "model" (state dict), "optimizer", "lr_scheduler", "scaler" (None without fp16), "epoch" (the last
    one done), "args" (the run's arguments, "model" the detector kind built), "config" (every DetectorConfig
    field), "categories" ({category id: name}), "rng" (every rank's RNG states, by rank).
Format "samdetr_ops.models.train/1", written before, has the same entries, its "config" without the loss and
matcher weights (they are read from the arguments when resuming, as then); it loads as format 2.
Official checkpoints (github.com/ZhangGongjie/SAM-DETR) hold "model" in the official key layout, converted by
models.convert, and "args" as an argparse.Namespace; they resume only their weights.
"""
import argparse
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist

from .config import ARCHITECTURE_FIELDS, config_to_dict
from .datasets import InputError

CHECKPOINT_FORMAT = "models.checkpoint/2"
OUR_FORMATS = (CHECKPOINT_FORMAT, "samdetr_ops.models.train/1")


def is_ours(checkpoint):
    """Whether models.train wrote `checkpoint` (any format of OUR_FORMATS), as opposed to the official code."""
    return checkpoint.get("format") in OUR_FORMATS


# ------------------------------------------------------------------------------------------------------ RNG
def rng_state():
    """This process's torch, Python, NumPy (and CUDA) RNG states, as checkpoints hold them (NumPy's as lists)."""
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


def every_rank_rng_state(world_size):
    """[rng_state() of rank r for r in range(world_size)], on every rank (a collective under DDP)."""
    states = [None] * world_size
    if world_size > 1:
        dist.all_gather_object(states, rng_state())
    else:
        states[0] = rng_state()
    return states


# ---------------------------------------------------------------------------------------------- write, read
def training_checkpoint(model, optimizer, lr_scheduler, scaler, epoch, run_args, cfg, categories, rng_states):
    """The CHECKPOINT_FORMAT dict after `epoch`. run_args: the run's arguments as a dict."""
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "args": run_args, "config": config_to_dict(cfg), "categories": categories,
            "rng": rng_states}


def save_checkpoint(checkpoint, path):
    """Writes `path` atomically: a temporary file in the same directory, flushed to disk, then renamed."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    """Reads a checkpoint saved by models.train or by the official code (no code runs: weights_only)."""
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


def official_input_proj_groupnorm(state_dict):
    """Whether an official state dict has the GroupNorm input projection (official: input_proj.0 = Sequential(conv,
    GroupNorm), so the norm's weight is input_proj.0.1.weight)."""
    return "input_proj.0.1.weight" in state_dict


def load_model_state(model, checkpoint, cfg, path):
    """Loads our checkpoints (after checking that their architecture is cfg's), and the official ones through
    models.convert (their 'model' entry has the official key names; their input projection form decides
    cfg.input_proj_groupnorm)."""
    state_dict = checkpoint["model"]
    if is_ours(checkpoint):
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


def restore_training_state(checkpoint, optimizer, lr_scheduler, scaler, rank, world_size, path):
    """Continues from our checkpoint: optimizer, scheduler, scaler and (same number of processes) every rank's RNG
    states. Returns the first epoch to run."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    states = checkpoint.get("rng", [])
    if len(states) == world_size:
        set_rng_state(states[rank])
    elif rank == 0:
        print(f"warning: {path} holds RNG states of {len(states)} processes, this run has "
              f"{world_size}: the run continues but not bit-exactly", file=sys.stderr)
    return checkpoint["epoch"] + 1
