"""Training, resuming, DDP, evaluation and prediction with the SAM-DETR of models/, on a tiny configuration.

Run as a script by torchrun, this file is also the worker of the DDP test (see `_ddp_worker`).
"""

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from models import DetectorConfig, build, synthetic
from models.checkpoint import CHECKPOINT_FORMAT
from models.convert import to_official_state_dict
from models.datasets import build_dataset, collate_fn
from models.engine import evaluate, train_one_epoch
from models.train import cli, freeze_backbone_unless_trained, get_args_parser, main, save_checkpoint

# Small enough for seconds per epoch on a 2-core CPU: 64 px images, 1 encoder and 2 decoder layers (so the
# auxiliary losses are exercised), 10 queries, width 32 (GroupNorm(32, C) needs C % 32 == 0), the backbone
# frozen (its backward is most of a step's time) except in the DDP test.
TINY_MODEL = ["--hidden_dim", "32", "--nheads", "4", "--dim_feedforward", "64", "--enc_layers", "1",
              "--dec_layers", "2", "--num_queries", "10", "--lr_backbone", "0"]
IMAGE_SCALE = 0.08  # DETR's 480..800 -> 38..64 px (eval: 64)


def tiny_config(**overrides):
    return DetectorConfig(**{"num_classes": 10, "hidden_dim": 32, "nheads": 4, "dim_feedforward": 64,
                             "enc_layers": 1, "dec_layers": 2, "num_queries": 10, **overrides})


def cli_argv(coco_dir, output_dir, *extra):
    """`python -m models.train` arguments of the tiny model (batch 2, no worker processes unless extra says)."""
    return [str(a) for a in ("--coco_path", coco_dir, "--output_dir", output_dir, "--image_scale", IMAGE_SCALE,
                             "--batch_size", 2, "--num_workers", 0, "--quiet", "--device", "cpu", *TINY_MODEL,
                             *extra)]


def run_args(coco_dir, output_dir, *extra):
    return get_args_parser().parse_args(cli_argv(coco_dir, output_dir, *extra))


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(root), num_train=8, num_val=6, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def one_epoch_run(coco_dir, tmp_path_factory):
    """OUT of one epoch of `python -m models.train` (worker processes on, dropout on)."""
    out = tmp_path_factory.mktemp("one_epoch")
    main(run_args(coco_dir, out, "--epochs", "1", "--num_workers", "1"))
    return out


def fixed_batches(coco_dir, num_images, batch_size):
    """Deterministic batches (evaluation transform) of the first images, resized to 64x64 so that no padding
    depends on how they are grouped (the input projection's GroupNorm sees padded pixels too)."""
    dataset = build_dataset("train", str(coco_dir), IMAGE_SCALE)
    dataset.transforms = build_dataset("val", str(coco_dir), IMAGE_SCALE).transforms
    samples = []
    for index in range(num_images):
        image, target = dataset[index]
        samples.append((torch.nn.functional.interpolate(image[None], size=(64, 64), mode="bilinear")[0], target))
    return [collate_fn(samples[i:i + batch_size]) for i in range(0, num_images, batch_size)]


# ------------------------------------------------------------------------------------------------- training
def test_print_freq_below_one_is_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--print_freq", "0"])
    assert "--print_freq" in capsys.readouterr().err


def test_command_line_defaults_are_the_configs():
    """Every DetectorConfig field but num_classes (the dataset's) is an argument with the config's default."""
    args = get_args_parser().parse_args([])
    for field in dataclasses.fields(DetectorConfig):
        if field.name != "num_classes":
            assert getattr(args, field.name) == field.default, field.name


def test_loss_and_matcher_weights_come_from_the_config():
    weights = dict(cls_loss_coef=1.5, bbox_loss_coef=4.0, giou_loss_coef=3.0, set_cost_class=1.0, set_cost_bbox=6.0,
                   set_cost_giou=2.5, focal_alpha=0.3, focal_gamma=1.5)
    _, criterion, _ = build(tiny_config(**weights))
    assert criterion.weight_dict == {f"{name}{suffix}": value for suffix in ("", "_0")
                                     for name, value in (("loss_ce", 1.5), ("loss_bbox", 4.0), ("loss_giou", 3.0))}
    assert (criterion.focal_alpha, criterion.focal_gamma) == (0.3, 1.5)
    matcher = criterion.matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou, matcher.alpha, matcher.gamma) == (
        1.0, 6.0, 2.5, 0.3, 1.5)


def test_loss_falls_when_overfitting(coco_dir):
    torch.manual_seed(0)
    model, criterion, _ = build(tiny_config(dropout=0.0))
    freeze_backbone_unless_trained(model, lr_backbone=0.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batches = fixed_batches(coco_dir, 4, 2)
    losses = [train_one_epoch(model, criterion, batches, optimizer, torch.device("cpu"), epoch, 1.0,
                              progress=False)["loss"] for epoch in range(10)]
    # Measured: 10.8 -> 7.3 (the 2x2 feature map of a 64 px image limits how far the boxes can fit).
    assert losses[-1] < 0.75 * losses[0], losses


def test_checkpoint_and_log_contents(one_epoch_run):
    checkpoint = torch.load(one_epoch_run / "checkpoint.pth", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "scaler", "epoch", "args", "config", "categories",
            "rng"} <= set(checkpoint)
    assert checkpoint["epoch"] == 0 and checkpoint["categories"][7] == "cross"
    # the format names the module that reads and writes it
    assert checkpoint["format"] == CHECKPOINT_FORMAT
    importlib.import_module(CHECKPOINT_FORMAT.split("/")[0])
    # the whole configuration, loss and matcher weights included
    assert checkpoint["config"] == dataclasses.asdict(tiny_config())
    row, = [json.loads(line) for line in (one_epoch_run / "log.jsonl").read_text().splitlines()]
    for key in ("train_loss", "train_lr", "train_epoch_time", "train_images_per_s", "test_AP", "test_AP50",
                "test_ARl"):
        assert key in row
    assert (one_epoch_run / "curves.png").stat().st_size > 0


def test_resume_is_exact(coco_dir, one_epoch_run, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main(run_args(coco_dir, straight, "--epochs", "2", "--num_workers", "1"))
    shutil.copytree(one_epoch_run, resumed)
    main(run_args(coco_dir, resumed, "--epochs", "2", "--num_workers", "1", "--resume",
                  str(resumed / "checkpoint.pth")))
    a = torch.load(straight / "checkpoint.pth", weights_only=True)
    b = torch.load(resumed / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"])
    rows = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (straight, resumed)]
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]


# SAMDETRConfig's fields, all that format "samdetr_ops.models.train/1" recorded as its "config"
FORMAT_1_CONFIG = ("num_classes", "hidden_dim", "nheads", "num_queries", "enc_layers", "dec_layers", "dim_feedforward",
                   "dropout", "dilation", "smca", "input_proj_groupnorm", "aux_loss", "backbone_weights", "ops",
                   "backbone", "backbone_norm")


def test_a_format_1_checkpoint_resumes_and_predicts(coco_dir, one_epoch_run, tmp_path):
    """A checkpoint as models.train wrote it before models/checkpoint.py (format "samdetr_ops.models.train/1",
    its config without the loss and matcher weights and with `ops` for aligner_implementation, its arguments
    without --focal_gamma) resumes exactly as
    today's does, and models.predict loads it."""
    from models.predict import load_detector
    today = torch.load(one_epoch_run / "checkpoint.pth", weights_only=True)
    renamed = {"aligner_implementation": "ops"}  # the field's and the flag's name in format 1
    before = dict(today, format="samdetr_ops.models.train/1",
                  config={renamed.get(k, k): v for k, v in today["config"].items()
                          if renamed.get(k, k) in FORMAT_1_CONFIG},
                  args={renamed.get(k, k): v for k, v in today["args"].items() if k != "focal_gamma"})
    assert before["config"]["ops"] == "fused" and "aligner_implementation" not in before["config"]
    for name, checkpoint in (("before", before), ("today", today)):
        (tmp_path / name).mkdir()
        torch.save(checkpoint, tmp_path / name / "checkpoint.pth")
        main(run_args(coco_dir, tmp_path / name, "--epochs", "2", "--resume", tmp_path / name / "checkpoint.pth"))
    a, b = (torch.load(tmp_path / name / "checkpoint.pth", weights_only=True) for name in ("before", "today"))
    assert a["epoch"] == b["epoch"] == 1 and a["format"] == CHECKPOINT_FORMAT
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    rows = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("before", "today")]
    for key in ("epoch", "train_loss", "test_AP", "test_AR100"):
        assert [r[key] for r in rows[0]] == [r[key] for r in rows[1]], key
    assert [r["epoch"] for r in rows[0]] == [1]
    torch.save(before, tmp_path / "before.pth")
    model, _, _, _ = load_detector(str(tmp_path / "before.pth"), torch.device("cpu"))
    assert all(torch.equal(v, before["model"][k]) for k, v in model.state_dict().items())


def _ddp_worker(out_dir, coco_dir):
    """Under torchrun: each of 2 ranks trains on its half of every global batch of 4; saves weights and loss."""
    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model, criterion, _ = build(tiny_config(dropout=0.0))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    shards = [collate_fn([(image, target) for image, target in zip(images[2 * rank:2 * rank + 2],
                                                                    targets[2 * rank:2 * rank + 2])])
              for images, _, targets in fixed_batches(coco_dir, 8, 4)]
    stats = train_one_epoch(ddp, criterion, shards, optimizer, torch.device("cpu"), 0, 0.1, progress=False)
    torch.save({"model": model.state_dict(), "loss": stats["loss"]}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_two_processes_match_one(coco_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
                    str(tmp_path), str(coco_dir)], check=True, env=env, timeout=600)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, tensor in ranks[0]["model"].items():
        assert torch.equal(tensor, ranks[1]["model"][name]), name  # DDP keeps the replicas identical
    torch.manual_seed(0)
    model, criterion, _ = build(tiny_config(dropout=0.0))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    stats = train_one_epoch(model, criterion, fixed_batches(coco_dir, 8, 4), optimizer, torch.device("cpu"), 0,
                            0.1, progress=False)
    # Same global batches: the same mean loss and the same update, up to the order of the float sums.
    assert ranks[0]["loss"] == pytest.approx(stats["loss"], rel=1e-5)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["model"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------- evaluation
class Oracle(torch.nn.Module):
    """Outputs the ground truth of the batches it is given, in order: a perfect detector."""

    def __init__(self, batches, num_classes, num_queries=10, shuffle_boxes=False):
        super().__init__()
        self.targets = [targets for _, _, targets in batches]
        self.num_classes, self.num_queries, self.shuffle_boxes = num_classes, num_queries, shuffle_boxes

    def forward(self, images, mask):
        targets = self.targets.pop(0)
        logits = torch.full((len(targets), self.num_queries, self.num_classes), -20.0)
        boxes = torch.full((len(targets), self.num_queries, 4), 0.5)
        for i, target in enumerate(targets):
            k = len(target["labels"])
            logits[i, torch.arange(k), target["labels"]] = 20.0
            boxes[i, :k] = target["boxes"].roll(1, 0) if self.shuffle_boxes else target["boxes"]
        return {"pred_logits": logits, "pred_boxes": boxes}


@pytest.mark.parametrize("shuffle_boxes", [False, True])
def test_evaluate_perfect_and_shuffled_detections(coco_dir, shuffle_boxes):
    dataset = build_dataset("val", str(coco_dir), IMAGE_SCALE)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_fn)
    _, _, postprocess = build(tiny_config())
    oracle = Oracle(list(loader), dataset.num_classes, shuffle_boxes=shuffle_boxes)
    stats = evaluate(oracle, postprocess, loader, dataset.coco, torch.device("cpu"))
    if shuffle_boxes:  # boxes rolled among an image's objects: only coincidental overlaps match
        assert stats["AP"] < 0.5
    else:  # the labels are the non-contiguous category ids, the boxes go back to file pixels exactly
        assert stats["AP"] == pytest.approx(1.0) and stats["num_images"] == len(dataset)


def _run_cli(argv, capsys):
    try:
        cli(argv)
    except SystemExit as exit:
        return exit.code, capsys.readouterr()
    return 0, capsys.readouterr()


def test_eval_only_reproduces_the_training_evaluation(coco_dir, one_epoch_run, tmp_path, capsys):
    code, output = _run_cli(cli_argv(coco_dir, tmp_path, "--eval", "--resume", one_epoch_run / "checkpoint.pth"),
                            capsys)
    assert code == 0 and "Average Precision" in output.out
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    logged = json.loads((one_epoch_run / "log.jsonl").read_text())
    assert evaluated["AP"] == logged["test_AP"] and evaluated["AR100"] == logged["test_AR100"]


def test_eval_of_an_official_checkpoint(coco_dir, one_epoch_run, tmp_path, capsys):
    """An official-layout checkpoint of the same weights (as the official code saves it, args as a Namespace)
    gives the same COCO numbers through --eval."""
    ours = torch.load(one_epoch_run / "checkpoint.pth", weights_only=True)
    official = tmp_path / "official.pth"
    torch.save({"model": to_official_state_dict(ours["model"]), "args": argparse.Namespace(num_queries=10),
                "epoch": 49}, official)
    code, _ = _run_cli(cli_argv(coco_dir, tmp_path, "--eval", "--resume", official), capsys)
    assert code == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    logged = json.loads((one_epoch_run / "log.jsonl").read_text())
    assert evaluated["AP"] == logged["test_AP"] and evaluated["AR100"] == logged["test_AR100"]


def test_predict_draws_pngs(coco_dir, one_epoch_run, tmp_path, capsys):
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    from models.predict import main as predict_main

    def decode_image(path):
        return pil_to_tensor(Image.open(path).convert("RGB"))
    images = sorted((coco_dir / "val2017").iterdir())[:2]
    predict_main([*map(str, images), "--checkpoint", str(one_epoch_run / "checkpoint.pth"), "--out",
                  str(tmp_path), "--threshold", "0.0", "--device", "cpu"])
    for image in images:
        drawn = decode_image(str(tmp_path / (image.stem + ".png")))
        assert drawn.shape == decode_image(str(image)).shape
        assert not torch.equal(drawn, decode_image(str(image)))  # boxes were drawn


def test_small_backbone_with_batchnorm_trains_saves_and_predicts(coco_dir, tmp_path, capsys):
    """--backbone resnet18 --backbone_norm batch (the demo's from-scratch backbone): the backbone trains, the
    checkpoint records it, models.predict rebuilds it, and --eval with the default ResNet-50 names the mismatch."""
    from models.predict import load_detector
    main(run_args(coco_dir, tmp_path, "--epochs", "1", "--backbone", "resnet18", "--backbone_norm", "batch",
                  "--lr_backbone", "1e-3"))
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert checkpoint["config"]["backbone"] == "resnet18" and checkpoint["config"]["backbone_norm"] == "batch"
    # Trainable BatchNorm: batch statistics were used and accumulated (a frozen one has no such buffer).
    assert checkpoint["model"]["backbone.body.layer4.0.bn1.num_batches_tracked"] == 4
    model, _, _, _ = load_detector(str(tmp_path / "checkpoint.pth"), torch.device("cpu"))
    assert model.backbone.num_channels == 512
    assert isinstance(model.backbone.body.layer4[0].bn1, torch.nn.BatchNorm2d)
    assert all(torch.equal(v, checkpoint["model"][k]) for k, v in model.state_dict().items())
    code, output = _run_cli(cli_argv(coco_dir, tmp_path, "--eval", "--resume", tmp_path / "checkpoint.pth"), capsys)
    assert code == 2 and "backbone: checkpoint 'resnet18', arguments 'resnet50'" in output.err


def test_dilation_needs_resnet50():
    from models.backbone import Backbone
    with pytest.raises(ValueError, match="dilation.*resnet50.*'resnet18'"):
        Backbone(dilation=True, name="resnet18")


@pytest.mark.skipif(os.environ.get("SAMDETR_SLOW_TESTS") != "1",
                    reason="slow: Inductor compiles the training and evaluation graphs on the CPU (12 min on the "
                           "shared 2-core machine, 5 min of CPU time, cold cache); SAMDETR_SLOW_TESTS=1 runs it")
def test_compiled_training_runs(coco_dir, tmp_path):
    """--compile (torch.compile, every batch padded to one canvas) trains and evaluates: 4 steps of varied image
    sizes through one compiled graph, then one evaluation."""
    stats = main(run_args(coco_dir, tmp_path, "--epochs", "1", "--compile"))
    row, = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert row["train_steps"] == 4 and row["train_loss"] > 0 and 0 <= stats["AP"] <= 1


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_coco_path_is_a_clear_error(tmp_path, capsys):
    code, output = _run_cli(["--coco_path", str(tmp_path / "absent"), "--device", "cpu"], capsys)
    assert code == 2 and "absent" in output.err and "Traceback" not in output.err


@pytest.mark.parametrize("damage", ["truncated", "missing", "mismatched"])
def test_bad_checkpoint_is_a_clear_error(coco_dir, one_epoch_run, tmp_path, capsys, damage):
    path = tmp_path / "checkpoint.pth"
    extra = []
    if damage == "truncated":
        data = (one_epoch_run / "checkpoint.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "mismatched":
        shutil.copy(one_epoch_run / "checkpoint.pth", path)
        extra = ["--num_queries", "12"]
    code, output = _run_cli(cli_argv(coco_dir, tmp_path, "--eval", "--resume", path, *extra), capsys)
    expected = {"truncated": "truncated", "missing": "does not exist", "mismatched": "num_queries"}[damage]
    assert code == 2 and str(path) in output.err and expected in output.err


def test_interrupted_checkpoint_write_keeps_the_previous_one(one_epoch_run, tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    shutil.copy(one_epoch_run / "checkpoint.pth", path)
    before = path.read_bytes()

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}}, str(path))
    assert path.read_bytes() == before


if __name__ == "__main__":
    from pathlib import Path
    _ddp_worker(sys.argv[1], Path(sys.argv[2]))
