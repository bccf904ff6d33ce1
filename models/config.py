"""The configuration of every detector of models/ (SAM-DETR, DETR, DAB-DETR): architecture, backbone, aligner
implementation,
and the loss and matcher weights. Its defaults are the official SAM-DETR ones; `models.train`'s command-line
defaults are read from them, and checkpoints record all of it."""
import dataclasses
import warnings
from dataclasses import InitVar, dataclass
from typing import Optional

# SemanticAligner's implementations: "fused" runs it on the samdetr_ops kernels, "reference" on the unfused official
# sequence (samdetr_ops.nn.IMPLEMENTATIONS).
ALIGNER_IMPLEMENTATIONS = ("fused", "reference")


@dataclass
class DetectorConfig:
    """The official defaults.

    Architecture: dilation=True is the DC5 variant; smca=True adds SMCA's Gaussian prior (SAM-DETR only);
    input_proj_groupnorm follows the official code's schedules under 25 epochs (both checkpoint forms load);
    backbone_weights: path of a local torchvision state dict of the chosen ResNet (else random init); backbone:
    resnet50 (official), resnet34 or resnet18; backbone_norm: "frozen" (official FrozenBatchNorm2d) or "batch"
    (trainable BatchNorm, for training a small backbone from scratch); aligner_implementation: one of
    ALIGNER_IMPLEMENTATIONS (`ops` before; SAMDETRConfig still takes it).

    Loss (models.criterion): total = cls_loss_coef * focal + bbox_loss_coef * L1 + giou_loss_coef * (1 - GIoU),
    on the last decoder layer and, with aux_loss, on every other one with the same weights. Matching
    (models.matcher): cost = set_cost_class * focal cost + set_cost_bbox * L1 - set_cost_giou * GIoU. Both use
    the sigmoid focal loss's focal_alpha and focal_gamma."""
    num_classes: int = 91
    hidden_dim: int = 256
    nheads: int = 8
    num_queries: int = 300
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    dilation: bool = False
    smca: bool = False
    input_proj_groupnorm: bool = True
    aux_loss: bool = True
    backbone_weights: str = None
    aligner_implementation: str = "fused"
    backbone: str = "resnet50"
    backbone_norm: str = "frozen"
    cls_loss_coef: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    set_cost_class: float = 2.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


# The fields that define the architecture: a checkpoint only loads into a model built with the same values.
ARCHITECTURE_FIELDS = ("num_classes", "hidden_dim", "nheads", "num_queries", "enc_layers", "dec_layers",
                       "dim_feedforward", "dilation", "smca", "input_proj_groupnorm", "backbone", "backbone_norm")


@dataclass
class SAMDETRConfig(DetectorConfig):
    """Deprecated name of DetectorConfig (the same fields), from before DETR and DAB-DETR shared it; it still takes
    `ops=`, aligner_implementation's former name, and reads it back as `.ops`."""
    ops: InitVar[Optional[str]] = None  # an argument, not a field: checkpoints record aligner_implementation

    def __post_init__(self, ops):
        if ops is not None:
            self.aligner_implementation = ops
        # stacklevel 3: the line that built the config (this is called by the dataclass's __init__)
        warnings.warn("models.SAMDETRConfig is deprecated: it is models.DetectorConfig (the same fields), which "
                      "configures every detector", DeprecationWarning, stacklevel=3)


SAMDETRConfig.ops = property(lambda self: self.aligner_implementation)  # after the dataclass took the InitVar


def config_to_dict(cfg):
    """The configuration a checkpoint records: every field of DetectorConfig."""
    return dataclasses.asdict(cfg)


def config_from_dict(saved, **overrides):
    """DetectorConfig of a checkpoint's "config", with `overrides`. Fields the checkpoint does not have (older
    ones: the backbone's, the loss and matcher weights) take the defaults; entries that are not fields are
    ignored."""
    values = saved | overrides
    if "ops" in values and "aligner_implementation" not in values:  # checkpoints written before the rename
        values["aligner_implementation"] = values["ops"]
    field_names = {field.name for field in dataclasses.fields(DetectorConfig)}
    return DetectorConfig(**{k: v for k, v in values.items() if k in field_names})


def check_aligner_implementation(cfg):
    """Raises ValueError unless cfg.aligner_implementation is one of ALIGNER_IMPLEMENTATIONS (checked before
    anything is built)."""
    if cfg.aligner_implementation not in ALIGNER_IMPLEMENTATIONS:
        raise ValueError(f"{type(cfg).__name__}.aligner_implementation must be 'fused' or 'reference', got "
                         f"{cfg.aligner_implementation!r}")


def check_no_smca(cfg, kind):
    """Raises ValueError if cfg asks for SMCA's prior from a detector `kind` that does not have it."""
    if cfg.smca:
        raise ValueError(f"{kind}: smca (SMCA's Gaussian prior) is a SAM-DETR option; build sam_detr for it")
