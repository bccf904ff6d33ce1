"""ResNet-50 backbone with frozen BatchNorm; the stem and layer1 are frozen, as in DETR."""
import warnings

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d


class Backbone(nn.Module):
    """images (B, 3, H, W), mask (B, H, W) True on padding -> features (B, 2048, H/32, W/32) (H/16, W/16 with
    dilation, i.e. DC5) and the mask resized to them (nearest)."""

    num_channels = 2048

    def __init__(self, dilation=False, weights_path=None):
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, dilation],
                                             norm_layer=FrozenBatchNorm2d)
        if weights_path is not None:
            resnet.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        else:
            warnings.warn("models.Backbone: no backbone_weights given, the ResNet-50 is randomly initialised "
                          "(nothing is downloaded; pass backbone_weights=PATH to a torchvision resnet50 state dict)")
        for name, parameter in resnet.named_parameters():
            if not name.startswith(("layer2", "layer3", "layer4")):
                parameter.requires_grad_(False)
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})

    def forward(self, images, mask):
        features = self.body(images)["0"]                                                # (B, 2048, h, w)
        mask = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]  # (B, h, w)
        return features, mask


def build_backbone(cfg):
    return Backbone(cfg.dilation, cfg.backbone_weights)
