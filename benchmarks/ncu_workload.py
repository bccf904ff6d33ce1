"""The workload `make gpu-check`'s ncu step profiles: one forward+backward of roi_align and semantic_align at a
benchmark shape (default B4 N300 25x38, C256, M8, 7x7, float32) on each backend asked for, after warm-up calls, with
only the measured calls between cudaProfilerStart/Stop (run ncu with --profile-from-start off).

    ncu --profile-from-start off --metrics ... python -m benchmarks.ncu_workload --backends cpp,triton
"""
import argparse

import torch

import samdetr_ops
from benchmarks.cases import Shape, make_inputs, op_call


def run_once(op, backend, inputs):
    fn, differentiable = op_call(op)
    leaves = {k: v.detach().requires_grad_(k in differentiable) for k, v in inputs.items()}
    with samdetr_ops.use_backend(backend):
        out = fn(samdetr_ops, leaves)
        out.backward(torch.ones_like(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="cpp", help="comma-separated: cpp, triton")
    p.add_argument("--ops", default="roi_align,semantic_align")
    p.add_argument("--shape", type=int, nargs=4, default=(4, 300, 25, 38), metavar=("B", "N", "H", "W"))
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    inputs = make_inputs(Shape(*args.shape), "cuda", getattr(torch, args.dtype), seed=0)
    cases = [(op, backend) for op in args.ops.split(",") for backend in args.backends.split(",")]
    for op, backend in cases:  # warm-up: Triton compiles, allocator caches
        for _ in range(2):
            run_once(op, backend, inputs)
    torch.cuda.synchronize()
    for op, backend in cases:
        print(f"profiling {op} on {backend}, shape {Shape(*args.shape)}, {args.dtype}", flush=True)
        torch.cuda.profiler.start()
        run_once(op, backend, inputs)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
