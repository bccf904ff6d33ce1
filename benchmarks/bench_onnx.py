"""SAM-DETR inference on CPU: onnxruntime (the graph samdetr_ops.onnx exports) vs PyTorch eager (the compiled
samdetr_ops kernels), side by side in one run with the same weights, inputs and thread count. Each repeat times one
forward of each, interleaved, so that load from other processes hits both alike; reports the medians and their
ratio, checks that the outputs agree, and writes benchmarks/results/bench-onnx-cpu.csv.

    python -m benchmarks.bench_onnx                                  # small and default (R50) configs
    python -m benchmarks.bench_onnx --configs small --batch 2 --size 128 128 --repeats 20 --threads 1
"""
import argparse
import os
import statistics
import time
import warnings

import torch

import models
import samdetr_ops.onnx
from benchmarks.bench import RESULTS, environment, write_csv

# The small detector of tests/test_onnx.py and the official configuration (models.DetectorConfig's defaults).
CONFIGS = {"small": dict(num_classes=5, hidden_dim=64, nheads=4, num_queries=6, enc_layers=1, dec_layers=2,
                         dim_feedforward=64),
           "default": dict()}


def make_inputs(B, H, W, seed=0):
    """Random images, the last one padded (a quarter of the width) when B > 1."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, H, W, generator=g)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    if B > 1:
        mask[-1, :, W * 3 // 4:] = True
    return images, mask


def measure(config, B, H, W, repeats, threads):
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone: timing does not depend on the weights
        torch.manual_seed(0)
        model = models.build(models.DetectorConfig(**CONFIGS[config]))[0].eval()
        inputs = make_inputs(B, H, W)
        start = time.perf_counter()
        program = samdetr_ops.onnx.export(model, inputs, opset_version=18, verbose=False)
        export_s = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs)}

    def run_torch():
        with torch.no_grad():
            return model(*inputs)

    def run_onnx():
        return session.run(None, feeds)

    expected = torch.utils._pytree.tree_leaves(run_torch())
    max_error = max((torch.from_numpy(o) - e).abs().max().item() for o, e in zip(run_onnx(), expected))
    times = {"torch": [], "onnxruntime": []}
    for _ in range(repeats):
        for name, fn in (("torch", run_torch), ("onnxruntime", run_onnx)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    return dict(config=config, batch=B, height=H, width=W, threads=threads, repeats=repeats,
                torch_ms=round(median["torch"], 2), onnxruntime_ms=round(median["onnxruntime"], 2),
                torch_over_onnxruntime=round(median["torch"] / median["onnxruntime"], 3),
                max_abs_error=f"{max_error:.2e}", export_s=round(export_s, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 320), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=os.path.join(RESULTS, "bench-onnx-cpu.csv"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment(torch.device("cpu"))
    rows = []
    for config in args.configs:
        row = {**measure(config, args.batch, *args.size, args.repeats, args.threads), **env}
        print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    write_csv(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
