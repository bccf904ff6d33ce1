"""Runs every CUDA kernel once, forward and backward, at small odd shapes and in every dtype: the workload that
`make gpu-check` hands to compute-sanitizer (memcheck, racecheck). Exits non-zero on a wrong result."""
import torch

import samdetr_ops
from samdetr_ops import reference


def main():
    torch.manual_seed(0)
    dev = "cuda"
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for C in (8, 13):  # vectorised and scalar channel paths
            B, H, W, N, M = 2, 9, 11, 5, 4
            features = torch.randn(B, H * W, C, device=dev).transpose(1, 2).reshape(B, C, H, W).to(dtype)
            xy = torch.rand(B, N, 2, device=dev) * 14 - 2
            boxes = torch.cat([xy, xy + torch.rand(B, N, 2, device=dev) * 8], -1).to(dtype)
            boxes[0, 0] = float("nan")
            points = (torch.rand(B, N, M, 2, device=dev) * 2.4 - 1.2).to(dtype)
            logits = torch.randn(B, N, M, C, device=dev).to(dtype)
            cxcywh = torch.rand(B, N, 4, device=dev).to(dtype)
            for t in (features, points, logits, cxcywh):
                t.requires_grad_()
            outs = [samdetr_ops.roi_align(features, boxes, 7), samdetr_ops.semantic_align(features, boxes, points, logits),
                    samdetr_ops.salient_point_pos_embed(cxcywh, points, logits)]
            loss = sum(o.float().square().sum() for o in outs)
            grads = torch.autograd.grad(loss, (features, points, logits, cxcywh))
            assert all(torch.isfinite(g).all() for g in grads), dtype
            if dtype == torch.float64:
                ref = reference.semantic_align(features, boxes, points, logits)
                torch.testing.assert_close(outs[1], ref, atol=1e-10, rtol=1e-10)
    torch.cuda.synchronize()
    print("sanitizer smoke: ok")


if __name__ == "__main__":
    main()
