"""Uses an installed samdetr_ops from outside the checkout (`make install-check`): it must be the installed copy,
carry its compiled extension, and give the reference's results through every public entry point.

    python tests/installed_smoke.py SITE_DIR     (run from a directory that is not the checkout)
"""
import os
import sys

import torch


def main(site_dir):
    import samdetr_ops
    from samdetr_ops import ops, reference

    location = os.path.realpath(samdetr_ops.__file__)
    assert location.startswith(os.path.realpath(site_dir)), f"imported {location}, not the installed copy"
    assert samdetr_ops.has_extension(), "the installed package has no compiled extension"
    g = torch.Generator().manual_seed(0)
    B, C, H, W, N, M = 2, 5, 7, 9, 3, 4
    features = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    xy = torch.rand(B, N, 2, generator=g, dtype=torch.float64) * 6
    boxes = torch.cat([xy, xy + 1 + torch.rand(B, N, 2, generator=g, dtype=torch.float64) * 3], -1)
    points = torch.rand(B, N, M, 2, generator=g, dtype=torch.float64) * 2 - 1
    logits = torch.randn(B, N, M, C, generator=g, dtype=torch.float64)
    cxcywh = torch.rand(B, N, 4, generator=g, dtype=torch.float64)
    embed_logits = torch.randn(B, N, M, 6, generator=g, dtype=torch.float64)  # an even width D
    # ms_deform_attn: levels 3x4 and 1x2 (S = 14 tokens), 2 heads x 3 channels, 2 points per level
    spatial_shapes, level_start_index = torch.tensor([[3, 4], [1, 2]]), torch.tensor([0, 12])
    value = torch.randn(B, 14, 2, 3, generator=g, dtype=torch.float64)
    locations = torch.rand(B, N, 2, 2, 2, 2, generator=g, dtype=torch.float64)
    weights = torch.rand(B, N, 2, 2, 2, generator=g, dtype=torch.float64)
    for name, args in (("roi_align", (features, boxes)), ("semantic_align", (features, boxes, points, logits)),
                       ("salient_point_pos_embed", (cxcywh, points, embed_logits)),
                       ("ms_deform_attn", (value, spatial_shapes, level_start_index, locations, weights))):
        with samdetr_ops.use_backend("cpp"):
            out = getattr(samdetr_ops, name)(*args)
        torch.testing.assert_close(out, getattr(reference, name)(*args), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ops.roi_align(features, list(boxes), 7, aligned=True),
                               reference.roi_align(features, boxes, 7).flatten(0, 1), atol=1e-12, rtol=1e-10)
    print(f"installed samdetr_ops {samdetr_ops.__version__} at {os.path.dirname(location)}: ok")


if __name__ == "__main__":
    main(sys.argv[1])
