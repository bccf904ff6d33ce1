"""ms_deform_attn, fused vs Deformable-DETR's PyTorch sequence, side by side in one process, at SAM-DETR's
multi-scale encoder shape: an 800 x 1066 image at strides 8/16/32 (levels 100x134, 50x67, 25x34: 17,600 tokens,
each a query), 8 heads x 32 channels, 4 points per level; locations a few pixels around each query (see
cases.msda_inputs).

    python -m benchmarks.bench_msda            # batch 1 and 2, float32, this machine's threads

Prints forward and forward+backward medians, the speed-ups, and the bytes autograd saves for backward beyond the
inputs (the fused op saves only its inputs).
"""
import argparse

import torch
from torch.utils import benchmark

import samdetr_ops
from benchmarks import cases
from benchmarks.bench import saved_bytes
from samdetr_ops import reference

LEVELS = [(100, 134), (50, 67), (25, 34)]


def median_ms(fn, min_run_time):
    fn()  # warm-up
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def measure(B, min_run_time):
    x = cases.msda_inputs(cases.Shape(B, 0, *LEVELS[0]), torch.Generator().manual_seed(B), LEVELS)
    inputs = [x[k] for k in ("msda_value", "msda_shapes", "msda_starts", "msda_locations", "msda_weights")]
    leaves = [t.requires_grad_() for t in (inputs[0], inputs[3], inputs[4])]
    grad = torch.randn(B, inputs[3].shape[1], inputs[0].shape[2] * inputs[0].shape[3])
    rows = {}
    for name, fn in (("fused", samdetr_ops.ms_deform_attn), ("reference", reference.ms_deform_attn)):
        with torch.no_grad():
            forward = median_ms(lambda: fn(*inputs), min_run_time)
        both = median_ms(lambda: torch.autograd.grad(fn(*inputs), leaves, grad), min_run_time)
        _, beyond_inputs = saved_bytes(lambda: fn(*inputs), inputs)
        rows[name] = (forward, both, beyond_inputs)
    expected, got = reference.ms_deform_attn(*inputs), samdetr_ops.ms_deform_attn(*inputs)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for name, (forward, both, saved) in rows.items():
        ref_forward, ref_both, _ = rows["reference"]
        print(f"B{B} {name:9s} forward {forward:8.1f} ms ({ref_forward / forward:5.1f}x)   forward+backward "
              f"{both:8.1f} ms ({ref_both / both:5.1f}x)   saved beyond the inputs {saved / 2**20:7.1f} MiB",
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, levels {LEVELS}, 8 heads x 32, "
          "4 points")
    for B in args.batch:
        measure(B, args.min_run_time)


if __name__ == "__main__":
    main()
