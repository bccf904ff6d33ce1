"""SAM-DETR (Semantic-Aligned Matching DETR, CVPR 2022) on the samdetr_ops kernels.

    model, criterion, postprocess = models.build(models.SAMDETRConfig(num_classes=91))
"""
from .sam_detr import SAMDETR, PostProcess, SAMDETRConfig, build

__all__ = ["SAMDETR", "SAMDETRConfig", "PostProcess", "build"]
