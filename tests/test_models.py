"""The SAM-DETR detector in models/: shape contracts of every variant, the padding mask, frozen parameters,
fused ops = reference ops, postprocess, torch.compile and autocast. Small configurations throughout (the
ResNet-50 dominates the time on CPU)."""
import dataclasses
import warnings

import pytest
import torch

import models
import samdetr_ops
from helpers import generator
from models.transformer import TransformerDecoderLayer

SMALL = dict(num_classes=5, hidden_dim=64, nheads=4, num_queries=6, enc_layers=1, dec_layers=2, dim_feedforward=64)


def build(**overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-backbone warning
        return models.build(models.DetectorConfig(**{**SMALL, **overrides}))


def test_samdetr_config_is_a_deprecated_alias():
    from models.sam_detr import SAMDETRConfig
    assert SAMDETRConfig is models.SAMDETRConfig
    with pytest.warns(DeprecationWarning, match="DetectorConfig"):
        cfg = models.SAMDETRConfig(num_classes=5, smca=True)
    assert isinstance(cfg, models.DetectorConfig)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(models.DetectorConfig(num_classes=5, smca=True))


def test_the_former_name_ops_of_aligner_implementation_still_works():
    """SAMDETRConfig(ops=...), its .ops, a checkpoint config with "ops" and the --ops flag of train and predict all
    reach aligner_implementation; DetectorConfig itself has no `ops` (checkpoints record the new name)."""
    from models.config import config_from_dict
    from models.predict import main as predict_main  # noqa: F401  (its parser is built inside main)
    from models.train import get_args_parser
    with pytest.warns(DeprecationWarning):
        cfg = models.SAMDETRConfig(ops="reference")
    assert cfg.aligner_implementation == "reference" and cfg.ops == "reference"
    assert "ops" not in dataclasses.asdict(cfg)
    assert config_from_dict({"ops": "reference"}).aligner_implementation == "reference"
    assert config_from_dict({"ops": "reference", "aligner_implementation": "fused"}).aligner_implementation == "fused"
    for flag in ("--ops", "--aligner_implementation"):
        assert get_args_parser().parse_args([flag, "reference"]).aligner_implementation == "reference"
    with pytest.raises(TypeError):
        models.DetectorConfig(ops="reference")


def images_and_mask(g, B=2, H=64, W=96, dtype=torch.float32):
    images = torch.randn(B, 3, H, W, generator=g, dtype=torch.float64).to(dtype)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    mask[1, :, W * 2 // 3:] = True     # the second image is 2/3 as wide and 3/4 as high
    mask[1, H * 3 // 4:, :] = True
    return images, mask


def targets_for(B, num_classes=5):
    boxes = [torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.25, 0.3, 0.2, 0.2]]), torch.tensor([[0.6, 0.4, 0.3, 0.5]])]
    labels = [torch.tensor([1, num_classes - 1]), torch.tensor([2])]
    return [{"labels": labels[b % 2], "boxes": boxes[b % 2]} for b in range(B)]


@pytest.mark.parametrize("variant", [dict(), dict(dilation=True), dict(smca=True),
                                     dict(smca=True, dilation=True, input_proj_groupnorm=False, aux_loss=False)],
                         ids=["R50", "DC5", "SMCA", "DC5-SMCA-noGN-noaux"])
def test_shape_contract_loss_and_postprocess(variant):
    model, criterion, postprocess = build(**variant)
    images, mask = images_and_mask(generator("shapes", str(variant)))
    out = model(images, mask)
    B, Q, K, L = 2, SMALL["num_queries"], SMALL["num_classes"], SMALL["dec_layers"]
    assert out["pred_logits"].shape == (B, Q, K) and out["pred_boxes"].shape == (B, Q, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    if variant.get("aux_loss", True):
        assert [tuple(a["pred_logits"].shape) for a in out["aux_outputs"]] == [(B, Q, K)] * (L - 1)
    else:
        assert "aux_outputs" not in out
    losses = criterion(out, targets_for(B))
    assert set(criterion.weight_dict) <= set(losses)
    assert len(criterion.weight_dict) == 3 * (L if variant.get("aux_loss", True) else 1)
    total = sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict)
    assert torch.isfinite(total)
    total.backward()
    results = postprocess(out, torch.tensor([[64, 96], [48, 64]]))
    assert [r["boxes"].shape for r in results] == [(min(100, Q * K), 4)] * B


def test_mask_defaults_to_no_padding():
    model, _, _ = build()
    model.eval()
    images, _ = images_and_mask(generator("nomask"))
    a = model(images)
    b = model(images, torch.zeros(2, 64, 96, dtype=torch.bool))
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], atol=0, rtol=0)


def test_frozen_parameters_get_no_gradient():
    model, criterion, _ = build()
    images, mask = images_and_mask(generator("frozen"))
    losses = criterion(model(images, mask), targets_for(2))
    sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict).backward()
    for name, p in model.named_parameters():
        trainable = not name.startswith("backbone.") or name.startswith(("backbone.body.layer2", "backbone.body.layer3",
                                                                         "backbone.body.layer4"))
        assert p.requires_grad == trainable, name
        assert (p.grad is not None) == trainable, name
    assert not any(b.requires_grad for b in model.backbone.buffers())  # FrozenBatchNorm2d: buffers only


@pytest.mark.parametrize("name", ["resnet50", "resnet18"])
def test_backbone_folded_frozen_batchnorm_equals_torchvision_resnet(name):
    """The backbone folds each FrozenBatchNorm2d into the conv before it and runs channels-last: same outputs and
    same gradients as torchvision's unfolded NCHW ResNet with the same (non-trivial) statistics, float64, and the
    same state-dict keys, so torchvision and official checkpoints load unchanged."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.ops.misc import FrozenBatchNorm2d

    from models.backbone import Backbone, ConvFrozenBatchNorm2d

    g = generator("folded backbone", name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = Backbone(name=name).double()
    resnet = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
    plain = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"}).double()
    state = {k: torch.rand(v.shape, generator=g, dtype=torch.float64) + 0.5 if k.endswith(("running_var", "bn1.weight"))
             else torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.1 for k, v in plain.state_dict().items()}
    plain.load_state_dict(state)
    assert set(backbone.body.state_dict()) == set(state)
    backbone.body.load_state_dict(state)
    assert sum(isinstance(m, ConvFrozenBatchNorm2d) for m in backbone.modules()) == sum(
        isinstance(m, FrozenBatchNorm2d) for m in plain.modules())
    images = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    folded, _ = backbone(images, torch.zeros(2, 64, 64, dtype=torch.bool))
    expected = plain(images)["0"]
    torch.testing.assert_close(folded, expected)
    grad = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    folded.backward(grad)
    expected.backward(grad)
    for (key, p), q in zip(backbone.body.named_parameters(), plain.parameters()):
        assert p.shape == q.shape, key
        if key.startswith(("layer2", "layer3", "layer4")):   # trainable; the stem and layer1 are frozen
            torch.testing.assert_close(p.grad, q.grad, msg=key)
        else:
            assert p.grad is None, key


def padded_map_and_box_logits(g, C, num_queries, H, W, h, w):
    """A float64 (1, C, H, W) map whose valid part is the top-left h x w (mask (1, H, W) True elsewhere), and
    (num_queries, 4) box logits whose boxes lie within [0.15, 0.85] of the valid part."""
    src = torch.randn(1, C, H, W, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[:, h:, :] = True
    mask[:, :, w:] = True
    centres = torch.rand(num_queries, 2, generator=g, dtype=torch.float64) * 0.3 + 0.35
    sizes = torch.rand(num_queries, 2, generator=g, dtype=torch.float64) * 0.2 + 0.2
    return src, mask, torch.logit(torch.cat([centres, sizes], -1))


@pytest.mark.parametrize("smca", [False, True])
def test_transformer_honours_padding(smca):
    """A padded image gives the same decoder outputs as the same image cropped to its valid part, and the
    memory under the mask can change freely: the encoder, the decoder's attention and the aligner's valid
    ratios all honour the mask. Reference boxes stay at least a pixel inside the valid part (RoIAlign's
    bilinear taps at a box edge reach the next pixel, as in the official code)."""
    model, _, _ = build(smca=smca)
    transformer = model.transformer.double().eval()
    g = generator("padding", smca)
    h, w = 4, 5                                                            # valid part h x w of 6 x 8
    src, mask, box_logits = padded_map_and_box_logits(g, SMALL["hidden_dim"], SMALL["num_queries"], 6, 8, h, w)
    heads = model.bbox_embed.double()                              # zero last layer: the boxes stay inside

    def run(src, mask):
        pos = model.position_embedding(mask).double()
        return transformer(src, mask, pos, box_logits, heads)

    hs, boxes = run(src, mask)
    hs_crop, boxes_crop = run(src[..., :h, :w].contiguous(), mask[..., :h, :w].contiguous())
    torch.testing.assert_close(hs, hs_crop, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(boxes, boxes_crop, atol=1e-12, rtol=1e-12)
    changed = src + 100 * mask[:, None] * torch.randn(src.shape, generator=g, dtype=torch.float64)
    hs_changed, _ = run(changed, mask)
    torch.testing.assert_close(hs, hs_changed, atol=1e-10, rtol=1e-10)


def test_fused_equals_reference_float64():
    """aligner_implementation="fused" and "reference" with the same weights: same outputs, losses and every
    parameter's gradient, float64 (DC5 and SMCA, so every aligner path runs)."""
    variant = dict(dilation=True, smca=True, dropout=0.0)
    torch.manual_seed(0)
    fused, criterion, _ = build(aligner_implementation="fused", **variant)
    reference, _, _ = build(aligner_implementation="reference", **variant)
    g = generator("fused-vs-reference")
    with torch.no_grad():   # random values in the zero-initialised layers, so that the points move
        for name, p in fused.named_parameters():
            if "point_mlp.6" in name or "bbox_embed" in name and "layers.2" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    reference.load_state_dict(fused.state_dict())
    images, mask = images_and_mask(g, dtype=torch.float64)

    def total_loss(out):
        losses = criterion(out, targets_for(2))
        return sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict)

    assert_fused_equals_reference(fused.double(), reference.double(), images, mask, total_loss)


def assert_fused_equals_reference(fused, reference, images, mask, total_loss):
    """Two float64 detectors with the same weights, on the compiled ops and on the reference ops: the same
    outputs, total loss (total_loss(outputs) -> scalar) and gradient of every trainable parameter."""
    def run(model):
        out = model(images, mask)
        total = total_loss(out)
        params = [p for p in model.parameters() if p.requires_grad]
        return [out["pred_logits"], out["pred_boxes"], total] + list(torch.autograd.grad(total, params))

    with samdetr_ops.use_backend("cpp"):
        got = run(fused)
    for a, b in zip(got, run(reference)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_postprocess_boxes_in_pixels():
    _, _, postprocess = build(num_classes=3)
    logits = torch.full((1, 2, 3), -10.0)
    logits[0, 1, 2] = 5.0                                            # query 1, class 2: the top score
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 0.5]]])
    result = postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 400]]))[0]
    assert result["labels"][0] == 2 and result["scores"].shape == (6,)
    torch.testing.assert_close(result["scores"][0], torch.sigmoid(torch.tensor(5.0)))
    torch.testing.assert_close(result["boxes"][0], torch.tensor([0.0, 50.0, 200.0, 150.0]))  # x1 y1 x2 y2


@pytest.mark.parametrize("smca", [False, True])
def test_decoder_layer_compiles_without_graph_break(smca):
    """torch.compile(fullgraph=True) traces a whole decoder layer, the fused ops included (aot_eager: the
    tracing is what is checked; the kernels stay the compiled extension's)."""
    torch.manual_seed(0)
    layer = TransformerDecoderLayer(32, 4, 32, 0.0, smca=smca).eval()
    g = generator("compile", smca)
    B, N, H, W, C = 2, 5, 4, 6, 32
    args = (torch.randn(B, N, C, generator=g), torch.randn(B, H * W, C, generator=g),
            torch.randn(B, H * W, C, generator=g), torch.zeros(B, H * W, dtype=torch.bool),
            torch.rand(B, N, 4, generator=g) * 0.5 + 0.25, (H, W), torch.ones(B, 2))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), layer(*args), atol=1e-5, rtol=1e-5)


def test_autocast_bfloat16_runs_close_to_float32():
    model, criterion, _ = build(dropout=0.0)
    model.eval()
    images, mask = images_and_mask(generator("autocast"))
    expected = model(images, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, mask)
        losses = criterion(out, targets_for(2))
    assert out["pred_logits"].dtype == torch.bfloat16
    sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict).backward()
    # bfloat16 keeps 8 bits of mantissa through a ResNet-50 and 3 transformer layers: a loose bound
    torch.testing.assert_close(out["pred_boxes"].float(), expected["pred_boxes"], atol=0.05, rtol=0.05)
