"""Drop-in replacements for torchvision.ops, computed by samdetr_ops' kernels: change one import,

    from torchvision.ops import roi_align, RoIAlign   ->   from samdetr_ops.ops import roi_align, RoIAlign

and keep every call: torchvision's signature, defaults (aligned=False), box forms (a Tensor[K, 5] whose first
column is the image index, in any order, or a list of Tensor[L, 4], one per image, of any lengths), output
(Tensor[K, C, h, w] in the order of the boxes) and autocast behaviour (computes in float32, returns the input's
dtype). They pass torchvision's own RoIAlign tests (`make torchvision-tests`). Not supported: quantized tensors
(torchvision's qroi_align).

The boxes are laid out as our (B, N, 4) batch, one row of N slots per image, without a Python loop over the
images: a list of equally long tensors is stacked as is; otherwise the boxes are scattered into their image's row
(the empty slots hold NaN boxes, which the kernels skip and which give zeros) and the output rows are gathered back
in the boxes' order. That costs one host sync (the longest row) and the gather copies the output once.

Under torch.jit.script the compiled kernels run directly (no backend choice); torch.fx traces roi_align as one call.
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from . import _public

__all__ = ["roi_align", "RoIAlign", "BoxFormatError"]


class BoxFormatError(ValueError, AssertionError):
    """Malformed `boxes`: a ValueError like every samdetr_ops argument error, and an AssertionError like
    torchvision's (which checks the box shapes with torch._assert), so code written for either catches it."""


def _require(condition: bool, message: str):
    if not condition:
        raise BoxFormatError("samdetr_ops.ops.roi_align: " + message)


def _batched_boxes(batch_size: int, boxes: Union[Tensor, List[Tensor]]) -> Tuple[Tensor, Optional[Tensor]]:
    """torchvision's box forms -> (B', N, 4) boxes of the first B' <= batch_size images (NaN where an image has
    fewer than N boxes) and, unless the K boxes are exactly those rows in order, the (K,) row of each box in the
    flattened (B' * N) batch."""
    if isinstance(boxes, Tensor):
        _require(boxes.dim() == 2 and boxes.size(1) == 5, "`boxes` as a tensor must have shape [K, 5] "
                 "(image index, x1, y1, x2, y2), got " + str(list(boxes.shape)))
        image = boxes[:, 0].to(torch.long)  # torchvision truncates the index to an int likewise
        coords = boxes[:, 1:]
        num_images = batch_size
        if boxes.size(0) > 0:
            bounds: List[int] = torch.stack([image.min(), image.max()]).tolist()  # one host sync for both
            _require(bounds[0] >= 0 and bounds[1] < batch_size,
                     "image indices in `boxes[:, 0]` must lie in [0, " + str(batch_size) + "), got " + str(bounds[0])
                     + " to " + str(bounds[1]))
        counts = torch.bincount(image, minlength=batch_size)
    else:
        _require(len(boxes) <= batch_size, "`boxes` lists " + str(len(boxes)) + " images but `input` holds only "
                 + str(batch_size))
        lengths: List[int] = []
        for b in boxes:  # shapes only: no data is touched
            _require(b.dim() == 2 and b.size(1) == 4,
                     "each tensor in the `boxes` list must have shape [L, 4], got " + str(list(b.shape)))
            lengths.append(b.size(0))
        num_images = len(boxes)
        if num_images == 0:
            return torch.empty(0, 0, 4), None
        if min(lengths) == max(lengths):
            return torch.stack(boxes), None  # the common case (DETR-style: as many boxes in every image): no scatter
        coords = torch.cat(boxes)
        counts = torch.tensor(lengths, device=coords.device)
        image = torch.repeat_interleave(torch.arange(num_images, device=coords.device), counts)
    _require(coords.is_floating_point(), "`boxes` must be a floating-point tensor, got " + str(coords.dtype))
    num_boxes = coords.size(0)
    row_length = int(counts.max()) if num_images > 0 else 0
    # slot of each box in its image's row: its rank among that image's boxes (a stable sort keeps their order)
    order = torch.argsort(image, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_boxes, device=image.device)
    starts = torch.cumsum(counts, 0) - counts
    flat_index = image * row_length + (rank - starts[image])
    batched = coords.new_full((num_images * row_length, 4), float("nan"))
    batched[flat_index] = coords
    return batched.view(num_images, row_length, 4), flat_index


@torch.jit.unused
def _roi_align_batched(input: Tensor, boxes: Tensor, output_size: List[int], spatial_scale: float,
                       sampling_ratio: int, aligned: bool) -> Tensor:
    """samdetr_ops.roi_align (backend choice, autocast, checks) on the (B, N, 4) batch."""
    return _public.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def roi_align(input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: BroadcastingList2[int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align on samdetr_ops' kernels.

    input (Tensor[B, C, H, W]); boxes (Tensor[K, 5] as image index, x1, y1, x2, y2, or a list of Tensor[L, 4],
    one per image); output_size (int or (h, w)); spatial_scale: input size / box coordinate scale; sampling_ratio:
    samples per bin side (<= 0: adaptive, ceil(box size / output size)); aligned: shift the boxes by -0.5 pixel
    (Detectron2). Returns Tensor[K, C, h, w] in the order of the boxes."""
    output_hw = _pair(output_size)
    batched, flat_index = _batched_boxes(input.size(0), boxes)
    if batched.size(0) == 0:  # no images in the list: no boxes
        return input.new_empty((0, input.size(1), output_hw[0], output_hw[1]))
    features = input[:batched.size(0)]
    if torch.jit.is_scripting():
        rois = torch.ops.samdetr_ops.roi_align(features, batched, output_hw, spatial_scale, sampling_ratio, aligned)
    else:
        rois = _roi_align_batched(features, batched, list(output_hw), spatial_scale, sampling_ratio, aligned)
    rois = rois.flatten(0, 1)  # (B' * N, C, h, w)
    return rois if flat_index is None else rois.index_select(0, flat_index)


torch.fx.wrap("roi_align")  # torch.fx traces a call to roi_align as one node, as torchvision's is


class RoIAlign(nn.Module):
    """torchvision.ops.RoIAlign on samdetr_ops' kernels; see roi_align."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")
