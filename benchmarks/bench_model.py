"""The whole SAM-DETR (R50, official configuration) on ops="fused" vs ops="reference", side by side in one run:
one training step (forward, loss, backward, AdamW step) and one inference forward. Time (median of the
interleaved repeats) and memory: on CUDA the peak allocated, on CPU the bytes autograd saves for backward
(the activation memory of the step). Writes benchmarks/results/bench-model-<device>.csv and .png.

    python -m benchmarks.bench_model                       # CPU: B=2 at 512x512; CUDA: B=4 at 800x1066
    python -m benchmarks.bench_model --batch 1 --size 256 256 --repeats 3
"""
import argparse
import os
import statistics
import time
import warnings

import torch

import models
from benchmarks.bench import RESULTS, environment, saved_bytes, write_csv  # the first row names every column

DEFAULT_SHAPE = {"cpu": (2, 512, 512), "cuda": (4, 800, 1066)}
IMPLS = ("reference", "fused")


def make_batch(B, H, W, num_classes, device, seed=0):
    """Images with the second half of the batch padded (a quarter of the width), and 1 to 5 targets per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, H, W, generator=g)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    mask[B // 2:, :, W * 3 // 4:] = True
    targets = []
    for b in range(B):
        k = int(torch.randint(1, 6, (1,), generator=g))
        centre = torch.rand(k, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(k, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, num_classes, (k,), generator=g).to(device),
                        "boxes": torch.cat([centre, size], 1).to(device)})
    return images.to(device), mask.to(device), targets


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_pair(device):
    """The two models with the same weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone: timing does not depend on the weights
        torch.manual_seed(0)
        built = {impl: models.build(models.DetectorConfig(aligner_implementation=impl)) for impl in IMPLS}
    built["fused"][0].load_state_dict(built["reference"][0].state_dict())
    return {impl: (model.to(device), criterion) for impl, (model, criterion, _) in built.items()}


def make_steps(model, criterion, images, mask, targets):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4,
                                  fused=True)  # as models.train

    def forward_loss():
        losses = criterion(model(images, mask), targets)
        return sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        forward_loss().backward()
        optimizer.step()

    @torch.no_grad()
    def inference():
        model.eval()
        return model(images, mask)

    return {"training step": train_step, "inference": inference}, forward_loss


def measure(pair, images, mask, targets, device, repeats):
    runners = {impl: make_steps(model, criterion, images, mask, targets) for impl, (model, criterion) in pair.items()}
    # check first: same weights, same outputs
    outputs = {impl: steps["inference"]() for impl, (steps, _) in runners.items()}
    difference = (outputs["fused"]["pred_boxes"] - outputs["reference"]["pred_boxes"]).abs().max().item()
    if difference > 1e-3:
        raise RuntimeError(f"bench_model: fused and reference outputs differ by {difference}")
    rows = []
    for case in ("training step", "inference"):
        times = {impl: [] for impl in IMPLS}
        for impl in IMPLS:           # warm-up
            runners[impl][0][case]()
        for _ in range(repeats):     # interleaved, so that a load change hits both
            for impl in IMPLS:
                synchronize(device)
                start = time.perf_counter()
                runners[impl][0][case]()
                synchronize(device)
                times[impl].append((time.perf_counter() - start) * 1e3)
        for impl in IMPLS:
            rows.append({"case": case, "ops": impl, "ms": statistics.median(times[impl]),
                         "ms_min": min(times[impl]), "ms_max": max(times[impl]), "repeats": repeats,
                         **memory(runners[impl], case, device)})
    for row in rows:
        reference = next(r for r in rows if r["case"] == row["case"] and r["ops"] == "reference")
        row["speedup"] = reference["ms"] / row["ms"]
    return rows


def memory(runner, case, device):
    steps, forward_loss = runner
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        steps[case]()
        torch.cuda.synchronize()
        return {"peak_MB": (torch.cuda.max_memory_allocated() - base) / 2**20}
    if case == "inference":
        return {}
    total, _ = saved_bytes(forward_loss, [])
    return {"saved_for_backward_MB": total / 2**20}


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 3.5), squeeze=False)
    for ax, case in zip(axes[0], cases):
        case_rows = [r for r in rows if r["case"] == case]
        ax.bar([r["ops"] for r in case_rows], [r["ms"] for r in case_rows], color=["tab:gray", "tab:green"])
        for i, r in enumerate(case_rows):
            ax.text(i, r["ms"], f"{r['ms']:.0f} ms\n{r['speedup']:.2f}x", ha="center", va="bottom")
        ax.set_title(case)
        ax.set_ylabel("ms (median)")
        ax.set_ylim(0, 1.3 * max(r["ms"] for r in case_rows))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, help="images per batch (default: 2 on CPU, 4 on CUDA)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (default 512 512 / 800 1066)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each case and implementation")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    B, H, W = DEFAULT_SHAPE[device.type]
    B = args.batch or B
    H, W = args.size or (H, W)
    env = environment(device)
    pair = build_pair(device)
    images, mask, targets = make_batch(B, H, W, 91, device)
    rows = measure(pair, images, mask, targets, device, args.repeats)
    shape = f"B{B} {H}x{W}"
    for row in rows:
        row.update(shape=shape, **env)
    print(f"SAM-DETR R50 (300 queries, 6+6 layers), {shape}, {env['card']}, torch {env['torch']}, "
          f"commit {env['commit']}")
    for row in rows:
        memory_note = "".join(f", {k} {v:.0f}" for k, v in row.items() if k.endswith("_MB"))
        print(f"  {row['case']:14s} {row['ops']:9s} {row['ms']:9.1f} ms (min {row['ms_min']:.1f}, max "
              f"{row['ms_max']:.1f}) speed-up {row['speedup']:.2f}x{memory_note}")
    default_shape = (B, H, W) == DEFAULT_SHAPE[device.type]
    stem = os.path.join(args.out, f"bench-model-{device.type}{'' if default_shape else '-partial'}")
    os.makedirs(args.out, exist_ok=True)
    write_csv(rows, stem + ".csv")
    print(f"results: {os.path.relpath(stem + '.csv')}")
    if not args.no_plot:
        try:
            plot(rows, stem + ".png", f"SAM-DETR R50 training step and inference, {shape}, {env['card']}")
        except ImportError as error:
            print(f"no plot: {error}")
    return rows


if __name__ == "__main__":
    main()
