"""DETR and DAB-DETR (with and without the Semantics Aligner) in models/: shape contracts, every parameter
trained, the padding mask, fused ops = reference ops, the loss falls when overfitting, and `--model` through
training, evaluation and resuming. Small configurations (the ResNet-50 dominates the time on CPU)."""
import json
import warnings

import pytest
import torch
from test_models import assert_fused_equals_reference, images_and_mask, padded_map_and_box_logits

import models
from helpers import generator
from models import synthetic
from models.builders import build_model
from models.dab_detr import per_head_linear, split_heads
from models.datasets import InputError, build_dataset, collate_fn
from models.train import get_args_parser, load_checkpoint, main

SMALL = dict(num_classes=5, hidden_dim=64, nheads=4, num_queries=6, enc_layers=1, dec_layers=2, dim_feedforward=64)
KINDS = ["detr", "dab_detr", "dab_detr_aligner"]


def build(kind, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-backbone warning
        return build_model(kind, models.DetectorConfig(**{**SMALL, **overrides}))


TARGETS = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.25, 0.3, 0.2, 0.2]])},
           {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.6, 0.4, 0.3, 0.5]])}]


def total_loss(criterion, out, targets=TARGETS):
    losses = criterion(out, targets)
    return sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict)


# Each family's top-level modules in the order they register their parameters. A checkpoint's optimizer state is
# a list in this order, and the creation order decides a seed's initial weights: both must survive refactoring.
MODULE_ORDER = {
    "sam_detr": ["backbone", "position_embedding", "transformer", "query_embed", "input_proj", "class_embed",
                 "bbox_embed"],
    "detr": ["backbone", "position_embedding", "transformer", "input_proj", "class_embed", "bbox_embed",
             "query_embed"],
    "dab_detr": ["backbone", "position_embedding", "transformer", "input_proj", "class_embed", "bbox_embed",
                 "anchor_embed"],
}


@pytest.mark.parametrize("kind", ["sam_detr", *KINDS])
def test_module_order_is_the_checkpoints(kind):
    model = build(kind)[0]
    assert [name for name, _ in model.named_children()] == MODULE_ORDER[kind.replace("_aligner", "")]
    per_layer_heads = kind == "sam_detr"   # SAM-DETR: one class and box head per decoder layer, DETR/DAB: shared
    assert isinstance(model.class_embed, torch.nn.ModuleList) == per_layer_heads
    assert isinstance(model.bbox_embed, torch.nn.ModuleList) == per_layer_heads


def test_detr_base_is_a_deprecated_alias():
    from models.base import DetectorBase
    from models.detr import DETRBase
    model = build("detr")[0]
    with pytest.warns(DeprecationWarning, match="DetectorBase"):
        base = DETRBase(model.backbone, model.position_embedding, model.transformer, SMALL["num_classes"])
    assert isinstance(base, DetectorBase)
    assert [name for name, _ in base.named_children()] == MODULE_ORDER["detr"][:-1]


@pytest.mark.parametrize("kind", KINDS)
def test_shape_contract_and_every_parameter_trains(kind):
    model, criterion, postprocess = build(kind)
    model.backbone.requires_grad_(False)   # its backward is most of the time; it is the SAM-DETR's (tested there)
    images, mask = images_and_mask(generator("dab-shapes", kind))
    out = model(images, mask)
    B, Q, K, L = 2, SMALL["num_queries"], SMALL["num_classes"], SMALL["dec_layers"]
    assert out["pred_logits"].shape == (B, Q, K) and out["pred_boxes"].shape == (B, Q, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert [tuple(a["pred_boxes"].shape) for a in out["aux_outputs"]] == [(B, Q, 4)] * (L - 1)
    total_loss(criterion, out).backward()
    # every parameter outside the backbone gets a gradient: an unused module would mean a wrong wiring (and
    # break DDP); the anchors train through their sine embedding and the first layer's box prediction
    no_gradient = [n for n, p in model.named_parameters() if not n.startswith("backbone.") and p.grad is None]
    assert no_gradient == []
    assert (kind == "dab_detr_aligner") == any("aligner" in n for n, _ in model.named_parameters())
    results = postprocess(out, torch.tensor([[64, 96], [48, 64]]))
    assert [r["boxes"].shape for r in results] == [(min(100, Q * K), 4)] * B


def test_dab_detr_layout_follows_the_public_code():
    """The decoder's modules where DAB-DETR has them: the query position's MLP of the 4-D anchor sine (2C -> C),
    the content scale and the width/height modulation heads, the query position in the first layer's
    cross-attention only, anchors (N, 4) and shared heads; the aligner variant drops the anchor-centre query's
    modules and adds one aligner per layer."""
    model, _, _ = build("dab_detr")
    decoder, C = model.transformer.decoder, SMALL["hidden_dim"]
    assert decoder.ref_point_head.layers[0].in_features == 2 * C
    assert decoder.ref_anchor_head.layers[-1].out_features == 2 and decoder.query_scale.layers[-1].out_features == C
    assert decoder.layers[0].ca_qpos_proj is not None and decoder.layers[1].ca_qpos_proj is None
    assert model.anchor_embed.weight.shape == (SMALL["num_queries"], 4)
    assert isinstance(model.class_embed, torch.nn.Linear)
    aligned, _, _ = build("dab_detr_aligner")
    assert aligned.transformer.decoder.query_scale is None and aligned.transformer.decoder.ref_anchor_head is None
    assert all(layer.aligner.num_points == SMALL["nheads"] for layer in aligned.transformer.decoder.layers)
    with pytest.raises(ValueError, match="smca"):
        build("dab_detr", smca=True)
    with pytest.raises(ValueError, match="model kind must be one of"):
        build("dab")


def test_per_head_linear_is_each_heads_slice_of_the_projection():
    g = generator("per-head-linear")
    B, N, M, C = 2, 3, 4, 16
    linear = torch.nn.Linear(C, C).double()
    x = torch.randn(B, N, M, C, generator=g, dtype=torch.float64)
    full = split_heads(linear(x), M)                                  # (B, N, M_input, M_head, C/M)
    torch.testing.assert_close(per_head_linear(linear, x), full.diagonal(dim1=2, dim2=3).movedim(-1, 2))
    # the same input for every head: the ordinary multi-head projection
    same = x[:, :, :1].expand(B, N, M, C)
    torch.testing.assert_close(per_head_linear(linear, same), split_heads(linear(x[:, :, 0]), M))


@pytest.mark.parametrize("kind", KINDS)
def test_transformer_honours_padding(kind):
    """A padded feature map gives the same decoder outputs as the same map cropped to its valid part, and the
    memory under the mask can change freely. Anchors stay well inside the valid part (RoIAlign's bilinear taps
    at a box edge reach the next pixel)."""
    model, _, _ = build(kind)
    transformer = model.transformer.double().eval()
    g = generator("dab-padding", kind)
    h, w = 4, 5                                                            # valid part h x w of 6 x 8
    src, mask, anchor_logits = padded_map_and_box_logits(g, SMALL["hidden_dim"], SMALL["num_queries"], 6, 8, h, w)
    head = model.bbox_embed.double()
    queries = model.query_embed.weight.double() if kind == "detr" else None

    def run(src, mask):
        pos = model.position_embedding(mask).double()
        if kind == "detr":
            return transformer(src, mask, pos, queries)
        return transformer(src, mask, pos, anchor_logits, head)[0]

    hs = run(src, mask)
    torch.testing.assert_close(hs, run(src[..., :h, :w].contiguous(), mask[..., :h, :w].contiguous()),
                               atol=1e-10, rtol=1e-10)
    changed = src + 100 * mask[:, None] * torch.randn(src.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(hs, run(changed, mask), atol=1e-10, rtol=1e-10)


def test_aligner_fused_equals_reference_float64():
    """dab_detr_aligner with aligner_implementation="fused" and "reference", same weights: same outputs, loss and
    every parameter's gradient, float64."""
    torch.manual_seed(0)
    fused, criterion, _ = build("dab_detr_aligner", aligner_implementation="fused", dropout=0.0)
    reference, _, _ = build("dab_detr_aligner", aligner_implementation="reference", dropout=0.0)
    g = generator("dab-fused-vs-reference")
    with torch.no_grad():   # random values in the zero-initialised layers, so that the points and boxes move
        for name, p in fused.named_parameters():
            if "point_mlp.6" in name or "bbox_embed.layers.2" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    reference.load_state_dict(fused.state_dict())
    images, mask = images_and_mask(g, dtype=torch.float64)
    for model in (fused, reference):
        model.double().backbone.requires_grad_(False)
    assert_fused_equals_reference(fused, reference, images, mask, lambda out: total_loss(criterion, out))


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(root), num_train=4, num_val=2, size=64, seed=0)
    return root


@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_when_overfitting(coco_dir, kind):
    """20 steps on the same 2 synthetic images (64 px, evaluation transform), backbone frozen."""
    dataset = build_dataset("train", str(coco_dir), 0.08)
    dataset.transforms = build_dataset("val", str(coco_dir), 0.08).transforms
    images, mask, targets = collate_fn([dataset[i] for i in range(2)])
    torch.manual_seed(0)
    model, criterion, _ = build(kind, num_classes=dataset.num_classes, dropout=0.0, hidden_dim=32,
                                dim_feedforward=64, num_queries=10)
    model.backbone.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(20):
        loss = total_loss(criterion, model(images, mask), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Measured: detr 14.2 -> 8.1, dab_detr 12.0 -> 7.0, dab_detr_aligner 13.0 -> 5.8.
    assert losses[-1] < 0.7 * losses[0], losses


TINY = ["--hidden_dim", "32", "--nheads", "4", "--dim_feedforward", "64", "--enc_layers", "1", "--dec_layers", "2",
        "--num_queries", "10", "--lr_backbone", "0", "--image_scale", "0.08", "--batch_size", "2", "--num_workers",
        "0", "--quiet", "--device", "cpu"]


def test_checkpoints_record_the_model_kind(coco_dir, tmp_path):
    """--model trains that detector and the checkpoint records it: --eval/--resume without --model rebuild it,
    a different --model is a clear error."""
    out = tmp_path / "run"
    common = ["--coco_path", str(coco_dir), *TINY]
    main(get_args_parser().parse_args(common + ["--output_dir", str(out), "--epochs", "1", "--model",
                                                "dab_detr_aligner"]))
    checkpoint = load_checkpoint(str(out / "checkpoint.pth"))
    assert checkpoint["args"]["model"] == "dab_detr_aligner"
    assert any(".aligner." in name for name in checkpoint["model"])
    args = get_args_parser().parse_args(common + ["--eval", "--resume", str(out / "checkpoint.pth")])
    logged, = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # the trained model itself (a kind other than the checkpoint's would not load it), and args left as parsed
    assert main(args)["AP"] == logged["test_AP"] and args.model is None
    with pytest.raises(InputError, match="holds a dab_detr_aligner model, --model asks for detr"):
        main(get_args_parser().parse_args(common + ["--eval", "--resume", str(out / "checkpoint.pth"),
                                                    "--model", "detr"]))
    # models.predict rebuilds the checkpoint's kind too (it built a SAM-DETR for every checkpoint before)
    from models.predict import load_detector
    model, _, _, _ = load_detector(str(out / "checkpoint.pth"), "cpu")
    assert type(model).__name__ == "DABDETR" and any(".aligner." in name for name, _ in model.named_parameters())
