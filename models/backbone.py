"""ResNet backbones (torchvision's, nothing downloaded); the stem and layer1 are frozen, as in DETR. The official
model is a ResNet-50 with frozen BatchNorm (the default); ResNet-18/34 and trainable BatchNorm are for small
experiments trained from scratch, e.g. `make demo` on a CPU.

Two layout choices make the frozen ResNet cheaper without changing its parameters or state-dict keys: each frozen
BatchNorm is folded into the convolution before it (one pass over the activation instead of three, forward and
backward), and the backbone runs channels-last (NHWC), which oneDNN and cuDNN convolve without layout reorders and
which the transformer flattens into (B, HW, C) tokens without a copy."""
import warnings

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

# name -> (torchvision constructor, channels of layer4)
RESNETS = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet34": (torchvision.models.resnet34, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
}
# "frozen": BatchNorm with fixed statistics and affine parameters (DETR's, for pretrained weights); "batch":
# ordinary BatchNorm, which normalises with batch statistics and learns, so that a randomly initialised ResNet trains.
NORM_LAYERS = {"frozen": FrozenBatchNorm2d, "batch": nn.BatchNorm2d}


class ConvFrozenBatchNorm2d(nn.Conv2d):
    """A bias-free Conv2d and the FrozenBatchNorm2d after it, computed as one convolution: the norm's fixed affine
    map y = x * scale + shift is folded into the weight and bias on every call, so the weight keeps training (its
    gradient is the same) while the activation is written once instead of being re-read by a multiply and an add.
    It shares the original conv's weight Parameter; the norm stays registered where torchvision put it (as a
    FoldedFrozenBatchNorm2d, the identity), so parameter names and state dicts are unchanged."""

    def __init__(self, conv, norm):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=False, padding_mode=conv.padding_mode, device="meta")
        self.weight = conv.weight
        object.__setattr__(self, "norm", norm)   # a reference, not a submodule: its buffers keep their names

    folded = None   # (scale, shift) of the norm, when the Backbone computed those of all its convs at once

    def forward(self, x):
        scale, shift = self.folded if self.folded is not None else fold_scales_and_shifts([self.norm])[0]
        return self._conv_forward(x, self.weight * scale[:, None, None, None], shift)


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """The statistics of a FrozenBatchNorm2d whose transform the ConvFrozenBatchNorm2d before it applies."""

    def forward(self, x):
        return x


@torch.no_grad()
def fold_scales_and_shifts(norms):
    """The affine maps y = x * scale + shift of frozen BatchNorms, all computed at once on their concatenated
    buffers (a few operations whatever their number, and export-friendly): scale = weight / sqrt(running_var +
    eps), shift = bias - running_mean * scale -> [(scale, shift)] (C_out,) each. The buffers take no gradient."""
    weight, bias, mean, var = (torch.cat([getattr(n, name) for n in norms])
                               for name in ("weight", "bias", "running_mean", "running_var"))
    epsilons = {n.eps for n in norms}  # one number in a ResNet: no per-norm tensor then
    eps = epsilons.pop() if len(epsilons) == 1 else torch.cat([torch.full_like(n.running_var, n.eps) for n in norms])
    scale = weight * (var + eps).rsqrt()
    shift = bias - mean * scale
    sizes = [n.running_var.numel() for n in norms]
    return list(zip(scale.split(sizes), shift.split(sizes)))


def fold_frozen_batchnorms(module):
    """Folds every FrozenBatchNorm2d that directly follows a bias-free Conv2d among its parent's children (in
    torchvision's ResNet: conv1 -> bn1, convK -> bnK in the blocks, downsample 0 -> 1) into that conv."""
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if type(conv) is nn.Conv2d and conv.bias is None and type(norm) is FrozenBatchNorm2d:
                folded_norm = FoldedFrozenBatchNorm2d(norm.weight.numel(), norm.eps)
                for name, buffer in norm.named_buffers():
                    setattr(folded_norm, name, buffer)
                setattr(parent, norm_name, folded_norm)
                setattr(parent, conv_name, ConvFrozenBatchNorm2d(conv, folded_norm))


class Backbone(nn.Module):
    """images (B, 3, H, W), mask (B, H, W) True on padding -> features (B, num_channels, H/32, W/32) (H/16, W/16
    with dilation, i.e. DC5) and the mask resized to them (nearest). num_channels: 2048 (ResNet-50), 512 (18, 34)."""

    def __init__(self, dilation=False, weights_path=None, name="resnet50", norm="frozen"):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone must be one of {sorted(RESNETS)}, got {name!r}")
        if norm not in NORM_LAYERS:
            raise ValueError(f"backbone norm must be one of {sorted(NORM_LAYERS)}, got {norm!r}")
        if dilation and name != "resnet50":  # torchvision's BasicBlock has no dilated form
            raise ValueError(f"dilation (DC5) needs backbone resnet50, got {name!r}")
        constructor, self.num_channels = RESNETS[name]
        resnet = constructor(weights=None, replace_stride_with_dilation=[False, False, dilation] if dilation else None,
                             norm_layer=NORM_LAYERS[norm])
        if weights_path is not None:
            resnet.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        else:
            warnings.warn(f"models.Backbone: no backbone_weights given, the {name} is randomly initialised "
                          f"(nothing is downloaded; pass backbone_weights=PATH to a torchvision {name} state dict)")
        for param_name, parameter in resnet.named_parameters():
            if not param_name.startswith(("layer2", "layer3", "layer4")):
                parameter.requires_grad_(False)
        if norm == "frozen":
            fold_frozen_batchnorms(resnet)
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})
        self.body.to(memory_format=torch.channels_last)
        # the convs with a folded norm, found once (a plain tuple: no second registration of the submodules)
        self.folded_convs = tuple(m for m in self.body.modules() if isinstance(m, ConvFrozenBatchNorm2d))

    def forward(self, images, mask):
        # every folded norm's scale and shift at once, for this call
        convs = self.folded_convs
        for conv, folded in zip(convs, fold_scales_and_shifts([conv.norm for conv in convs]) if convs else []):
            conv.folded = folded
        try:
            features = self.body(images.contiguous(memory_format=torch.channels_last))["0"]  # (B, C, h, w) NHWC
        finally:
            for conv in convs:
                conv.folded = None
        mask = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]  # (B, h, w)
        return features, mask


def build_backbone(cfg):
    return Backbone(cfg.dilation, cfg.backbone_weights, cfg.backbone, cfg.backbone_norm)
