"""The SAM-DETR paper's claim (faster convergence than DETR) at a scale a CPU can run: DETR, DAB-DETR,
DAB-DETR + Semantics Aligner, SAM-DETR and SAM-DETR + SMCA trained by `python -m models.train` with the same
backbone, model size, budget, schedule and seeds on the synthetic dataset (models/synthetic.py), COCO AP on its
validation split after every epoch. No pretrained weights can be downloaded, so the default budget keeps the
randomly initialised ResNet-50 frozen (--lr_backbone 0): every model sees the same fixed features, and what is
compared is how fast each decoder learns from them.

    python -m benchmarks.convergence                                   # the defaults below, 2 seeds
    python -m benchmarks.convergence --epochs 4 --train 64 --seeds 0   # a smoke run

Each run is a separate process (`--jobs` at a time, `--threads` torch threads each: on a shared machine one
thread per process is much faster than oversubscribed cores); a run whose log already holds every epoch is not
repeated. Writes benchmarks/results/convergence-synthetic.csv (one row per model, seed and epoch) and .png (AP,
AP50 and training loss per epoch: the mean over seeds, the band from the lowest to the highest seed) and prints
the final values as a Markdown table.
"""
import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from benchmarks.bench import RESULTS

# name -> models.train arguments
MODELS = {"detr": ["--model", "detr"], "dab_detr": ["--model", "dab_detr"],
          "dab_detr_aligner": ["--model", "dab_detr_aligner"], "sam_detr": ["--model", "sam_detr"],
          "sam_detr_smca": ["--model", "sam_detr", "--smca"]}


def get_args():
    parser = argparse.ArgumentParser("python -m benchmarks.convergence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "kwcoco"],
                        help="generator of the data: models.synthetic or kwcoco's toy shapes (models.kwcoco_demo)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train", type=int, default=100, help="training images")
    parser.add_argument("--val", type=int, default=25, help="validation images")
    parser.add_argument("--size", type=int, default=96, help="image size (pixels)")
    parser.add_argument("--work_dir", default=os.path.join("/tmp", "samdetr-convergence"),
                        help="dataset and run directories (checkpoints, logs)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--train_args", default="--hidden_dim 64 --nheads 4 --dim_feedforward 256 --enc_layers 2 "
                        "--dec_layers 3 --num_queries 20 --dropout 0.0 --batch_size 4 --lr 4e-4 "
                        "--lr_backbone 0 --image_scale 0.12",
                        help="models.train arguments shared by every run (model size, budget, schedule)")
    return parser.parse_args()


def run_command(args, data_dir, name, seed, out_dir):
    return [sys.executable, "-m", "models.train", "--coco_path", data_dir, "--output_dir", out_dir,
            "--epochs", str(args.epochs), "--lr_drop", str(10 * args.epochs), "--seed", str(seed),
            "--num_workers", "0", "--device", "cpu", "--quiet", *args.train_args.split(), *MODELS[name]]


def read_log(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_all(args, data_dir):
    """Runs every (model, seed) not yet complete, `args.jobs` at a time; returns {(name, seed): log rows}."""
    runs = {(name, seed): os.path.join(args.work_dir, f"runs-{args.dataset}", f"{name}-seed{seed}")
            for name in args.models for seed in args.seeds}
    pending = [key for key, out in runs.items() if len(read_log(os.path.join(out, "log.jsonl"))) < args.epochs]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    running = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, seed = pending.pop(0)
            out = runs[name, seed]
            if os.path.isdir(out):   # an incomplete run starts again: its log must hold one line per epoch
                for file in os.listdir(out):
                    os.remove(os.path.join(out, file))
            os.makedirs(out, exist_ok=True)
            log = open(os.path.join(out, "stderr.txt"), "w")
            print(f"start {name} seed {seed}", file=sys.stderr, flush=True)
            running.append((name, seed, log, subprocess.Popen(run_command(args, data_dir, name, seed, out), env=env,
                                                              stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for entry in list(running):
            name, seed, log, process = entry
            if process.poll() is not None:
                log.close()
                running.remove(entry)
                status = "done" if process.returncode == 0 else f"FAILED ({process.returncode}), see {log.name}"
                print(f"{status}: {name} seed {seed}", file=sys.stderr, flush=True)
    return {key: read_log(os.path.join(out, "log.jsonl")) for key, out in runs.items()}


def rows_of(logs):
    return [{"model": name, "seed": seed, "epoch": r["epoch"] + 1, "AP": r["test_AP"], "AP50": r["test_AP50"],
             "AP75": r["test_AP75"], "train_loss": r["train_loss"], "epoch_time_s": r["train_epoch_time"]}
            for (name, seed), log in logs.items() for r in log]


def plot(rows, path, title):
    """AP, AP50 and the training loss per epoch: the mean over seeds, a band from the lowest to the highest seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = (("AP", "COCO AP (val)"), ("AP50", "COCO AP50 (val)"), ("train_loss", "training loss (weighted sum)"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(15, 4.5))
    for name in dict.fromkeys(r["model"] for r in rows):
        epochs = sorted({r["epoch"] for r in rows if r["model"] == name})
        colour = None
        for ax, (metric, _) in zip(axes, metrics):
            values = [[r[metric] for r in rows if r["model"] == name and r["epoch"] == e] for e in epochs]
            line, = ax.plot(epochs, [statistics.mean(v) for v in values], marker="o", label=name, color=colour)
            colour = line.get_color()
            ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], alpha=0.2, color=colour)
    for ax, (_, label) in zip(axes, metrics):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    args = get_args()
    if args.dataset == "kwcoco":
        from models.kwcoco_demo import generate
    else:
        from models.synthetic import generate
    data_dir = os.path.join(args.work_dir, f"{args.dataset}-{args.train}-{args.val}-{args.size}")
    if not os.path.isfile(os.path.join(data_dir, "annotations", "instances_val2017.json")):
        generate(data_dir, num_train=args.train, num_val=args.val, size=args.size, seed=0)
    started = time.time()
    rows = rows_of(run_all(args, data_dir))
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, f"convergence-{args.dataset}")
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python -m benchmarks.convergence " + " ".join(sys.argv[1:])
    title = (f"{args.dataset} {args.train} train / {args.val} val images, {args.size} px; {args.epochs} epochs, seeds "
             f"{args.seeds}; {args.train_args}\n{command}; {platform.machine()} CPU, {args.jobs} runs x "
             f"{args.threads} thread(s)")
    plot(rows, stem + ".png", title)
    print(f"{title}\nwall time {time.time() - started:.0f} s\n\n"
          "| model | final AP per seed | mean AP | mean AP50 | mean final training loss |\n|---|---|---|---|---|")
    last = max(r["epoch"] for r in rows)
    for name in args.models:
        final = [r for r in rows if r["model"] == name and r["epoch"] == last]
        if final:
            per_seed = ", ".join(f"{r['AP']:.3f}" for r in final)
            print(f"| {name} | {per_seed} | {statistics.mean(r['AP'] for r in final):.3f} | "
                  f"{statistics.mean(r['AP50'] for r in final):.3f} | "
                  f"{statistics.mean(r['train_loss'] for r in final):.2f} |")


if __name__ == "__main__":
    main()
