"""SAM-DETR (Semantic-Aligned Matching DETR, CVPR 2022), DETR and DAB-DETR on the samdetr_ops kernels.

    model, criterion, postprocess = models.build(models.DetectorConfig(num_classes=91))
"""
from .config import DetectorConfig, SAMDETRConfig
from .sam_detr import SAMDETR, PostProcess, build

__all__ = ["SAMDETR", "DetectorConfig", "SAMDETRConfig", "PostProcess", "build"]
