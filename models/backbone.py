"""ResNet backbones (torchvision's, nothing downloaded); the stem and layer1 are frozen, as in DETR. The official
model is a ResNet-50 with frozen BatchNorm (the default); ResNet-18/34 and trainable BatchNorm are for small
experiments trained from scratch, e.g. `make demo` on a CPU."""
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
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})

    def forward(self, images, mask):
        features = self.body(images)["0"]                                                # (B, C, h, w)
        mask = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]  # (B, h, w)
        return features, mask


def build_backbone(cfg):
    return Backbone(cfg.dilation, cfg.backbone_weights, cfg.backbone, cfg.backbone_norm)
