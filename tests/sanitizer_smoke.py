"""The workload `make gpu-check` hands to compute-sanitizer (memcheck, initcheck, racecheck, synccheck): every op,
forward and backward, through every backend asked for, in every dtype, over the inputs where memory bugs hide.
Exits non-zero on a wrong result. tests/test_triton.py runs it on CPU (float32/float64, both backends, the Triton
one in the interpreter) so that CI catches a break before a GPU does.

What each case covers, for the kernels' index arithmetic and vector loads:
- channel counts: 8 (16-byte vectors in half precision), 13 (odd: scalar path, masked Triton lanes), 520 (wide:
  more channel vectors than an item has lanes, so each lane loops);
- features that start one element into their storage (misaligned for vector loads: the launchers must fall back
  to narrower vectors), channels-last, as a DETR encoder's tokens viewed as a map;
- boxes of every kind: mixed sizes, partly off the map, huge (the sample-range search runs), tiny, flipped, NaN
  and Inf corners; points beyond [-1, 1] and a NaN point;
- aligned True/False, sampling_ratio -1 (adaptive) and 2, spatial_scale 1 and 0.5 (boxes in input pixels).

    python tests/sanitizer_smoke.py --device cuda --backends cpp,triton
"""
import argparse
import sys

import torch

import samdetr_ops
from samdetr_ops import reference

ALL_DTYPES = ("float32", "float64", "float16", "bfloat16")
# (aligned, sampling_ratio, spatial_scale): torchvision's legacy and current rules, fixed and adaptive sampling
GEOMETRIES = ((True, -1, 1.0), (False, 2, 0.5))


def _misaligned_channels_last(g, B, C, H, W, dtype, device):
    """(B, C, H, W) channels-last features whose data starts one element into their storage."""
    storage = torch.randn(B * H * W * C + 1, generator=g).to(device=device, dtype=dtype)
    features = storage[1:].view(B, H, W, C).permute(0, 3, 1, 2)
    assert features.storage_offset() == 1
    return features


def _boxes(g, B, N, H, W, spatial_scale, dtype, device):
    """(B, N, 4) x1 y1 x2 y2 in input pixels: mixed, huge, tiny, flipped, NaN and Inf boxes (N >= 8)."""
    size = torch.tensor([W, H], dtype=torch.float64)
    centre = torch.rand(B, N, 2, generator=g, dtype=torch.float64) * (size + 4) - 2
    wh = torch.rand(B, N, 2, generator=g, dtype=torch.float64) * size + 0.2
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    boxes[:, 1] = torch.tensor([-30.0 * W, -30.0 * H, 40.0 * W, 40.0 * H])  # huge: sample-range search
    boxes[:, 2] = torch.tensor([2.0, 2.0, 2.3, 2.2])                         # tiny
    boxes[:, 3] = torch.tensor([5.0, 5.0, 2.0, 3.0])                         # flipped
    boxes[:, 4] = torch.tensor([1.0, 1.0, float("nan"), float("nan")])      # NaN far corner
    boxes[:, 5] = torch.tensor([float("nan"), 0.0, 3.0, 3.0])               # NaN near corner
    boxes[:, 6] = torch.tensor([0.0, 0.0, float("inf"), 3.0])               # Inf corner
    return (boxes / spatial_scale).to(device=device, dtype=dtype)


def _check(what, out, expected, dtype):
    if dtype in (torch.float32, torch.float64):
        tol = dict(atol=1e-9, rtol=1e-8) if dtype == torch.float64 else dict(atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(out, expected, **tol, equal_nan=True, msg=lambda m: f"{what}: {m}")
    elif torch.isinf(out).any():
        raise AssertionError(f"{what}: infinite values")


def run_case(backend, dtype, C, aligned, sampling_ratio, spatial_scale, device, output_size=7):
    """One op set, forward and backward, through `backend`; checked against the reference (float32/64)."""
    g = torch.Generator().manual_seed(C * 31 + int(aligned) + sampling_ratio)
    B, H, W, N, M = 2, 9, 11, 8, 3
    D = 2 * C  # the embedding width must be even (13 -> 26: an odd half)
    features = _misaligned_channels_last(g, B, C, H, W, dtype, device)
    boxes = _boxes(g, B, N, H, W, spatial_scale, dtype, device)
    points = (torch.rand(B, N, M, 2, generator=g) * 2.4 - 1.2).to(device=device, dtype=dtype)
    points[0, 0, 0, 0] = float("nan")
    logits = torch.randn(B, N, M, C, generator=g).to(device=device, dtype=dtype)
    cxcywh = torch.rand(B, N, 4, generator=g).to(device=device, dtype=dtype)
    embed_logits = torch.randn(B, N, M, D, generator=g).to(device=device, dtype=dtype)
    leaves = [t.requires_grad_() for t in (features, points, logits, cxcywh, embed_logits)]
    geometry = (output_size, spatial_scale, sampling_ratio, aligned)
    what = f"{backend} {dtype} C={C} aligned={aligned} sampling_ratio={sampling_ratio} scale={spatial_scale}"

    def run(module, boxes, aligned_points):
        outs = [module.roi_align(features, boxes, *geometry),
                module.semantic_align(features, boxes, aligned_points, logits, *geometry),
                module.salient_point_pos_embed(cxcywh, points, embed_logits)]  # NaN point -> NaN embedding
        # a weighted sum, so that every gradient element differs
        loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=device).view(o.shape)).sum() for o in outs)
        return outs + list(torch.autograd.grad(loss, leaves))

    with samdetr_ops.use_backend(backend):
        got = run(samdetr_ops, boxes, points)
    names = ["roi_align", "semantic_align", "salient_point_pos_embed"] + \
        [f"grad {n}" for n in ("features", "points", "logits", "cxcywh", "embed_logits")]
    if dtype in (torch.float32, torch.float64):
        # the reference (torchvision) takes no NaN/Inf box: give it what such a box means, a box that reads
        # nothing (far off the map), and semantic_align a point off the grid for the NaN point
        far = torch.tensor([-1e4, -1e4, -1e4 + 1, -1e4 + 1], dtype=dtype, device=device) / spatial_scale
        finite_boxes = torch.where(torch.isfinite(boxes).all(-1, keepdim=True), boxes, far)
        finite_points = torch.where(torch.isnan(points), torch.full_like(points, 10.0), points)
        expected = run(reference, finite_boxes, finite_points)
    else:
        expected = got
    for name, out, exp in zip(names, got, expected):
        _check(f"{what}: {name}", out, exp, dtype)
    assert (got[0][:, 4:7] == 0).all() and (got[1][:, 4:7] == 0).all(), f"{what}: NaN/Inf boxes must give zeros"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", default="cpp,triton", help="comma-separated: cpp, triton")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated (default: all four on CUDA, float32 and float64 on CPU)")
    parser.add_argument("--channels", default="8,13,520", help="comma-separated channel counts")
    parser.add_argument("--output-size", type=int, default=7, help="RoI grid size (smaller: quicker)")
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",") if args.dtypes else ALL_DTYPES if args.device == "cuda" else ALL_DTYPES[:2]
    cases = 0
    for backend in args.backends.split(","):
        for dtype in dtypes:
            for C in map(int, args.channels.split(",")):
                for aligned, sampling_ratio, spatial_scale in GEOMETRIES:
                    run_case(backend, getattr(torch, dtype), C, aligned, sampling_ratio, spatial_scale, args.device,
                             args.output_size)
                    cases += 1
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer smoke: ok ({cases} cases on {args.device})")


if __name__ == "__main__":
    sys.exit(main())
