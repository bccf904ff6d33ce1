"""Every detector of models/ by name, for the training command and for rebuilding a model from a checkpoint.
All take a DetectorConfig (sizes, layers, backbone, ops, loss and matcher weights) and return
(model, criterion, postprocess)."""
from .dab_detr import build_dab_detr, build_dab_detr_aligner
from .datasets import InputError
from .detr import build_detr
from .sam_detr import build as build_sam_detr

MODEL_BUILDERS = {"sam_detr": build_sam_detr, "dab_detr": build_dab_detr, "dab_detr_aligner": build_dab_detr_aligner,
                  "detr": build_detr}


def build_model(kind, cfg):
    """kind: one of MODEL_BUILDERS; cfg: DetectorConfig -> (model, criterion, postprocess)."""
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"model kind must be one of {sorted(MODEL_BUILDERS)}, got {kind!r}")
    return MODEL_BUILDERS[kind](cfg)


def checkpoint_model_kind(checkpoint):
    """The model kind a checkpoint holds: its arguments' --model (models.train records it); checkpoints from
    before the option, and the official ones, hold a SAM-DETR."""
    args = checkpoint.get("args")
    return (args.get("model") if isinstance(args, dict) else None) or "sam_detr"


def resolve_model_kind(requested, checkpoint, path=""):
    """The kind to build: the checkpoint's, if there is one (`requested` None, or the same kind), else
    `requested` (None: sam_detr). A different requested kind is an InputError naming both."""
    if checkpoint is None:
        return requested or "sam_detr"
    saved = checkpoint_model_kind(checkpoint)
    if requested is not None and requested != saved:
        raise InputError(f"checkpoint {path} holds a {saved} model, --model asks for {requested}; "
                         f"leave --model out to use the checkpoint's")
    return saved
