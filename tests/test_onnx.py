"""ONNX export (samdetr_ops.onnx): each op exported through torch.onnx (dynamo) as standard ONNX operators and run in
onnxruntime, against the op in eager mode: every RoIAlign setting, hostile boxes and points, batch size and box
count left dynamic (exported once, run at two sizes), opsets 18 and 20; ms_deform_attn with hostile locations and
its level sizes as data (run at level sizes other than the export's, empty levels included) and the MSDeformAttn
module; the Triton namespace's ops; the whole SAM-DETR (small configuration, random weights) through
torch.export.export and onnxruntime at two image sizes and two batch sizes. Skipped when onnx, onnxscript or
onnxruntime is missing (`pip install -e .[onnx]`)."""
import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import samdetr_ops  # noqa: E402
import samdetr_ops.onnx  # noqa: E402
from helpers import FORWARD_TOL, generator, make_boxes, make_cxcywh, make_features, make_points  # noqa: E402

pytestmark = pytest.mark.skipif(not samdetr_ops.has_extension(), reason="the compiled extension is not built")

# Exported with (B, N) = EXPORT_SIZE, then run at RUN_SIZES: nothing about B or N may be baked into the graph.
EXPORT_SIZE = (2, 7)
RUN_SIZES = [(3, 11), (1, 4)]
C, H, W = 5, 9, 12
DYNAMIC_BATCH, DYNAMIC_BOXES = torch.export.Dim("batch", max=64), torch.export.Dim("boxes", max=4096)


class OpModule(torch.nn.Module):
    """One public op (samdetr_ops.<name>) with its scalar arguments fixed, as a model to export."""

    def __init__(self, name, *scalars):
        super().__init__()
        self.op, self.scalars = getattr(samdetr_ops, name), scalars

    def forward(self, *tensors):
        return self.op(*tensors, *self.scalars)


def hostile_boxes(g, B, N, spatial_scale):
    """(B, N, 4) boxes, N >= 4: random ones of every kind (helpers.make_boxes), then in every image a flipped box
    (both axes, wider than a bin: onnxruntime's RoiAlign fails on it unguarded), a box flipped along x only, a NaN
    corner and an Inf corner, which our ops accept and answer (zeros for the last two)."""
    kinds = ["mixed", "flipped", "tiny", "outside", "huge"]
    random = torch.cat([make_boxes(g, B, N, H, W, spatial_scale, kinds[i % len(kinds)]) for i in range(N)], 1)
    special = torch.tensor([[9.0, 8.0, 1.0, 2.0], [9.0, 1.0, 1.0, 8.0], [1.0, 1.0, float("nan"), 5.0],
                            [float("-inf"), 2.0, 3.0, float("inf")]]) / spatial_scale
    boxes = random[:, :N].clone()
    boxes[:, :4] = special
    return boxes


def hostile_points(g, B, N, M):
    """(B, N, M, 2) points, partly off the grid, with a NaN, an Inf and a 1e30 coordinate (they read nothing)."""
    points = make_points(g, B, N, M, spread=1.5)
    points[:, 0, 0, 0], points[:, 0, 1, 1], points[:, 0, 2, 0] = float("nan"), float("inf"), -1e30
    return points


def run_onnx(program, inputs):
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {arg.name: tensor.numpy() for arg, tensor in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


def export_quietly(module, inputs, dynamic_shapes, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on training mode, unused axis names, ...
        # OpModule.forward(*tensors): torch.export sees one argument, the tuple of tensors
        return samdetr_ops.onnx.export(module.eval(), tuple(inputs),
                                       dynamic_shapes=None if dynamic_shapes is None else (dynamic_shapes,),
                                       opset_version=opset, verbose=False)


def check_op_exports(name, scalars, make_inputs, dynamic_shapes, opset, tol=FORWARD_TOL[torch.float32]):
    """Exports op `name` once at EXPORT_SIZE and checks onnxruntime against eager at every RUN_SIZES."""
    module = OpModule(name, *scalars)
    program = export_quietly(module, make_inputs(*EXPORT_SIZE), dynamic_shapes, opset)
    ops = {node.op_type for node in program.model.graph}
    assert not any(node.domain not in ("", "ai.onnx") for node in program.model.graph), "non-standard operators"
    for B, N in RUN_SIZES:
        inputs = make_inputs(B, N)
        (got,) = run_onnx(program, inputs)
        torch.testing.assert_close(got, module(*inputs), **tol, msg=lambda m: f"{name} B={B} N={N}: {m}")
    return ops


@pytest.mark.parametrize("opset", [18, 20])
@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale,output_size", [
    (True, -1, 1.0, 7), (True, 2, 0.5, (3, 5)), (False, -1, 0.25, (4, 2)), (False, 2, 1.0, 3)])
def test_roi_align(opset, aligned, sampling_ratio, spatial_scale, output_size):
    g = generator("onnx roi_align", opset, aligned, sampling_ratio, spatial_scale, output_size)

    def make_inputs(B, N):
        return make_features(g, B, C, H, W), hostile_boxes(g, B, N, spatial_scale)

    ops = check_op_exports("roi_align", (output_size, spatial_scale, sampling_ratio, aligned), make_inputs,
                           ({0: DYNAMIC_BATCH}, {0: DYNAMIC_BATCH, 1: DYNAMIC_BOXES}), opset)
    assert "RoiAlign" in ops


@pytest.mark.parametrize("opset", [18, 20])
@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale,output_size", [
    (True, -1, 1.0, 7), (False, 2, 0.5, (3, 4))])
def test_semantic_align(opset, aligned, sampling_ratio, spatial_scale, output_size):
    g = generator("onnx semantic_align", opset, aligned, sampling_ratio, spatial_scale, output_size)
    M = 3

    def make_inputs(B, N):
        return (make_features(g, B, C, H, W, "channels_last"), hostile_boxes(g, B, N, spatial_scale),
                hostile_points(g, B, N, M), torch.randn(B, N, M, C, generator=g))

    dynamic = {0: DYNAMIC_BATCH, 1: DYNAMIC_BOXES}
    ops = check_op_exports("semantic_align", (output_size, spatial_scale, sampling_ratio, aligned), make_inputs,
                           ({0: DYNAMIC_BATCH}, dynamic, dynamic, dynamic), opset)
    assert {"RoiAlign", "GridSample", "Sigmoid", "Mul"} <= ops


@pytest.mark.parametrize("opset", [18, 20])
@pytest.mark.parametrize("depth,temperature", [(8, 10000.0), (6, 20.0)], ids=["D8", "D6-odd-half"])
def test_salient_point_pos_embed(opset, depth, temperature):
    g = generator("onnx pos embed", opset, depth, temperature)
    M = 3

    def make_inputs(B, N):
        return make_cxcywh(g, B, N), make_points(g, B, N, M), torch.randn(B, N, M, depth, generator=g)

    dynamic = {0: DYNAMIC_BATCH, 1: DYNAMIC_BOXES}
    ops = check_op_exports("salient_point_pos_embed", (temperature,), make_inputs, (dynamic, dynamic, dynamic), opset)
    assert {"Sin", "Cos", "Sigmoid", "Mul"} <= ops


# ms_deform_attn: (H, W) per level, odd sizes and a 1x1 level; heads, D per head, points per level
MSDA_LEVELS = [(5, 7), (1, 1), (3, 2)]
MSDA_HEADS, MSDA_D, MSDA_P = 2, 3, 2


def level_tensors(levels):
    """spatial_shapes (L, 2) and level_start_index (L,) of the (H, W) list `levels`."""
    shapes = torch.tensor(levels, dtype=torch.int64).view(-1, 2)
    sizes = shapes.prod(1)
    return shapes, torch.cumsum(sizes, 0) - sizes


def msda_inputs(g, B, Q, levels=MSDA_LEVELS):
    """ms_deform_attn's inputs, locations partly outside [0, 1] and, for the first query (Q >= 2), a NaN x, an Inf y
    and a -1e30 x (they read nothing)."""
    shapes, starts = level_tensors(levels)
    L = len(levels)
    value = torch.randn(B, int(shapes.prod(1).sum()), MSDA_HEADS, MSDA_D, generator=g)
    locations = torch.rand(B, Q, MSDA_HEADS, L, MSDA_P, 2, generator=g) * 1.6 - 0.3
    locations[:, 0, 0, 0, 0, 0], locations[:, 0, 1, L - 1, 1, 1] = float("nan"), float("inf")
    locations[:, 1, 0, L - 1, 0, 0] = -1e30
    weights = torch.softmax(torch.randn(B, Q, MSDA_HEADS, L * MSDA_P, generator=g), -1)
    return value, shapes, starts, locations, weights.view(B, Q, MSDA_HEADS, L, MSDA_P)


@pytest.mark.parametrize("opset", [18, 20])
def test_ms_deform_attn(opset):
    """Batch size and query count dynamic; one GridSample per level; hostile locations answered as the op does."""
    g = generator("onnx ms_deform_attn", opset)
    dynamic = {0: DYNAMIC_BATCH, 1: DYNAMIC_BOXES}
    ops = check_op_exports("ms_deform_attn", (), lambda B, Q: msda_inputs(g, B, Q),
                           ({0: DYNAMIC_BATCH}, None, None, dynamic, dynamic), opset)
    assert {"GridSample", "Slice", "Mul", "ReduceSum"} <= ops


@pytest.mark.parametrize("export_levels,run_levels", [
    (MSDA_LEVELS, [[(4, 9), (1, 1), (2, 5)], [(0, 4), (1, 1), (2, 0)], [(3, 3), (0, 0), (6, 1)]]),
    ([(4, 6)], [[(7, 3)], [(0, 5)]])], ids=["L3", "L1"])
def test_ms_deform_attn_level_sizes_are_data(export_levels, run_levels):
    """Each level's H, W and start are read from spatial_shapes and level_start_index in the graph: exported at one
    set of level sizes (S dynamic), the graph runs at others, empty levels (H or W = 0, read as nothing) included."""
    g = generator("onnx ms_deform_attn levels", len(export_levels))
    dynamic = {0: DYNAMIC_BATCH, 1: DYNAMIC_BOXES}
    module = OpModule("ms_deform_attn")
    program = export_quietly(module, msda_inputs(g, *EXPORT_SIZE, export_levels),
                             ({0: DYNAMIC_BATCH, 1: torch.export.Dim("S", max=10**6)}, None, None, dynamic, dynamic),
                             18)
    assert [node.op_type for node in program.model.graph].count("GridSample") == len(export_levels)
    for levels in run_levels:
        inputs = msda_inputs(g, 3, 5, levels)
        (got,) = run_onnx(program, inputs)
        torch.testing.assert_close(got, module(*inputs), **FORWARD_TOL[torch.float32], msg=lambda m: f"{levels}: {m}")


@pytest.mark.parametrize("reference_size", [2, 4], ids=["points", "boxes"])
def test_ms_deform_attn_module_exports(reference_size):
    """samdetr_ops.nn.MSDeformAttn (small, random weights), with reference points or boxes and a padding mask: batch
    size, query count and S dynamic; onnxruntime equals eager at two sizes and another set of level sizes."""
    from samdetr_ops.nn import MSDeformAttn

    g = generator("onnx MSDeformAttn", reference_size)
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=8, n_levels=len(MSDA_LEVELS), n_heads=2, n_points=2).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.5, generator=g)

    def inputs(B, Q, levels):
        shapes, starts = level_tensors(levels)
        S = int(shapes.prod(1).sum())
        mask = torch.rand(B, S, generator=g) < 0.2
        reference = torch.rand(B, Q, len(levels), reference_size, generator=g)
        return (torch.randn(B, Q, 8, generator=g), reference, torch.randn(B, S, 8, generator=g), shapes, starts, mask)

    batch_queries = {0: DYNAMIC_BATCH, 1: DYNAMIC_BOXES}
    batch_s = {0: DYNAMIC_BATCH, 1: torch.export.Dim("S", max=10**6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = samdetr_ops.onnx.export(module, inputs(*EXPORT_SIZE, MSDA_LEVELS), opset_version=18, verbose=False,
                                          dynamic_shapes=(batch_queries, batch_queries, batch_s, None, None, batch_s))
    assert [node.op_type for node in program.model.graph].count("GridSample") == len(MSDA_LEVELS)
    for (B, Q), levels in zip(RUN_SIZES, (MSDA_LEVELS, [(4, 9), (1, 1), (2, 5)])):
        x = inputs(B, Q, levels)
        (got,) = run_onnx(program, x)
        with torch.no_grad():
            expected = module(*x)
        torch.testing.assert_close(got, expected, **FORWARD_TOL[torch.float32],
                                   msg=lambda m: f"B={B} Q={Q} {levels}: {m}")


def test_grid_sample_mode_name_follows_the_opset():
    """GridSample's bilinear mode is "bilinear" up to opset 19 and "linear" from 20."""
    g = generator("onnx grid mode")
    inputs = (make_features(g, 1, C, H, W), make_boxes(g, 1, 2, H, W), make_points(g, 1, 2, 3),
              torch.randn(1, 2, 3, C, generator=g))
    for opset, mode in ((18, "bilinear"), (20, "linear")):
        program = export_quietly(OpModule("semantic_align"), inputs, None, opset)
        (node,) = [node for node in program.model.graph if node.op_type == "GridSample"]
        assert node.attributes["mode"].value == mode
        assert program.model.opset_imports[""] == opset


def test_unguarded_flipped_box_breaks_onnxruntime():
    """Why the guard exists: onnxruntime's own RoiAlign rejects (integer overflow: it multiplies the adaptive sample
    counts 2 and ceil(-8 / 7) = -1) a box flipped along y that our ops, and the exported graph, answer with zeros.
    In a subprocess: onnxruntime may crash at exit after the error."""
    script = """
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
node = helper.make_node("RoiAlign", ["X", "rois", "index"], ["Y"], coordinate_transformation_mode="half_pixel",
                        output_height=7, output_width=7, sampling_ratio=0)
inputs = [helper.make_tensor_value_info(n, t, None) for n, t in (("X", TensorProto.FLOAT),
          ("rois", TensorProto.FLOAT), ("index", TensorProto.INT64))]
graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
session = ort.InferenceSession(model.SerializeToString())
try:
    session.run(None, {"X": np.ones((1, 2, 9, 12), np.float32), "rois": np.array([[1.0, 9.0, 9.0, 1.0]], np.float32),
                       "index": np.zeros(1, np.int64)})
    print("RAN")
except Exception as error:
    print("FAILED", error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "RAN" not in result.stdout, "onnxruntime now takes flipped boxes: the guard could go (keep the tests)"
    g = generator("onnx flipped")
    features = make_features(g, 1, 2, 9, 12)
    boxes = torch.tensor([[[1.0, 9.0, 9.0, 1.0]]])  # flipped along y only: sample counts 2 x -1
    program = export_quietly(OpModule("roi_align"), (features, boxes), None, 18)
    (got,) = run_onnx(program, (features, boxes))
    assert (got == 0).all() and (samdetr_ops.roi_align(features, boxes) == 0).all()


def test_translation_table_covers_both_namespaces():
    """Every forward op of both namespaces, each translated by the function its OpSpec's onnx_translation names."""
    table = samdetr_ops.onnx.translation_table()
    names = {op.name() for op in table}
    namespaces = ["samdetr_ops"] + (["samdetr_ops_triton"] if importlib.util.find_spec("triton") else [])
    translated = {name for name, spec in samdetr_ops.OP_SPECS.items() if spec.onnx_translation}
    assert names == {f"{namespace}::{name}" for namespace in namespaces for name in translated}
    for op, function in table.items():
        spec = samdetr_ops.OP_SPECS[op.name().split("::")[1]]
        assert function is getattr(samdetr_ops.onnx, spec.onnx_translation), op


def test_export_merges_the_callers_table():
    """A caller's entry for one of our ops wins over ours; the rest of ours still applies."""
    from onnxscript import opset18 as op

    def roi_align_as_zeros(features, boxes, output_size=(7, 7), spatial_scale=1.0, sampling_ratio=-1, aligned=True):
        return op.Mul(samdetr_ops.onnx.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio,
                                                 aligned), op.CastLike(0.0, features))

    g = generator("onnx merge")
    features, boxes = make_features(g, 1, C, H, W), make_boxes(g, 1, 3, H, W)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = samdetr_ops.onnx.export(
            OpModule("roi_align").eval(), (features, boxes), verbose=False,
            custom_translation_table={torch.ops.samdetr_ops.roi_align.default: roi_align_as_zeros})
    (got,) = run_onnx(program, (features, boxes))
    assert (got == 0).all() and not (samdetr_ops.roi_align(features, boxes) == 0).all()
    with pytest.raises(ValueError, match="dynamo=True"):
        samdetr_ops.onnx.export(OpModule("roi_align"), (features, boxes), dynamo=False)


TRITON_SCRIPT = """
import torch, warnings
import samdetr_ops, samdetr_ops.onnx, samdetr_ops.triton
import onnxruntime as ort

class TritonOps(torch.nn.Module):
    def forward(self, features, boxes, points, logits, cxcywh, value, shapes, starts, locations, weights):
        t = torch.ops.samdetr_ops_triton
        return (t.roi_align(features, boxes, [3, 4], 0.5, -1, True),
                t.semantic_align(features, boxes, points, logits, [7, 7], 0.5, 2, False),
                t.salient_point_pos_embed(cxcywh, points, logits, 10000.0),
                t.ms_deform_attn(value, shapes, starts, locations, weights))

g = torch.Generator().manual_seed(0)
def inputs(B, N):
    boxes = torch.rand(B, N, 4, generator=g) * 20
    boxes[:, 0] = torch.tensor([18.0, 16.0, 2.0, 4.0])  # flipped
    locations = torch.rand(B, N, 2, 2, 3, 2, generator=g) * 1.6 - 0.3  # ms_deform_attn: levels 5x7 and 1x1
    locations[:, 0, 0, 0, 0, 0] = float("nan")
    return (torch.randn(B, 6, 9, 12, generator=g), boxes, torch.rand(B, N, 4, 2, generator=g) * 2.4 - 1.2,
            torch.randn(B, N, 4, 6, generator=g), torch.rand(B, N, 4, generator=g) * 0.5 + 0.2,
            torch.randn(B, 36, 2, 3, generator=g), torch.tensor([[5, 7], [1, 1]]), torch.tensor([0, 35]), locations,
            torch.rand(B, N, 2, 2, 3, generator=g))
batch, boxes = torch.export.Dim("batch", max=64), torch.export.Dim("boxes", max=4096)
d = {0: batch, 1: boxes}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    program = samdetr_ops.onnx.export(TritonOps(), inputs(2, 5),
                                      dynamic_shapes=({0: batch}, d, d, d, d, {0: batch}, None, None, d, d),
                                      opset_version=20, verbose=False)
session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
for B, N in ((3, 8), (1, 2)):
    x = inputs(B, N)
    got = session.run(None, {a.name: t.numpy() for a, t in zip(session.get_inputs(), x)})
    features, boxes, points, logits, cxcywh = x[:5]
    expected = (samdetr_ops.roi_align(features, boxes, (3, 4), 0.5, -1, True),
                samdetr_ops.semantic_align(features, boxes, points, logits, 7, 0.5, 2, False),
                samdetr_ops.salient_point_pos_embed(cxcywh, points, logits), samdetr_ops.ms_deform_attn(*x[5:]))
    for o, e in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(o), e, atol=2e-5, rtol=1e-5)
print("OK", [n.target for n in program.exported_program.graph.nodes if "samdetr" in str(n.target)])
"""


def test_triton_namespace_exports():
    """The Triton ops (samdetr_ops_triton::*) export through the same table; onnxruntime's results equal the
    compiled ops' (the Triton kernels equal those: tests/test_triton.py). In a subprocess without the Triton
    interpreter, which cannot run the ops' fake kernels (torch.export would fail under TRITON_INTERPRET=1)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "samdetr_ops_triton.roi_align" in result.stdout and "semantic_align" in result.stdout
    assert "samdetr_ops_triton.ms_deform_attn" in result.stdout


# ---- the whole detector ---------------------------------------------------------------------------------------
SMALL_SAM_DETR = dict(num_classes=5, hidden_dim=64, nheads=4, num_queries=6, enc_layers=1, dec_layers=2,
                      dim_feedforward=64)
# (B, H, W) of the images the exported detector runs on: two batch sizes, two image sizes (the export used (2, 64, 96))
MODEL_RUN_SIZES = [(1, 64, 96), (3, 96, 64)]


def images_and_mask(g, B, H, W):
    """Random images, the last one padded on the right and bottom (mask True there) when B > 1."""
    images = torch.randn(B, 3, H, W, generator=g)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    if B > 1:
        mask[-1, :, W * 3 // 4:] = True
        mask[-1, H * 2 // 3:, :] = True
    return images, mask


@pytest.fixture(scope="module", params=["sam_detr", "dab_detr_aligner"])
def sam_detr_export(request):
    """A small SAM-DETR, or DAB-DETR with the aligner (random weights), and its torch.export.export with batch size
    and image size dynamic."""
    import models
    from models.builders import build_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-backbone warning
        model = build_model(request.param, models.DetectorConfig(**SMALL_SAM_DETR))[0].eval()
    batch = torch.export.Dim("batch", max=64)
    # at least 64 pixels: the ResNet's stride-32 map must have 2 pixels a side (else export specialises on 1)
    height, width = torch.export.Dim("height", min=64, max=4096), torch.export.Dim("width", min=64, max=4096)
    inputs = images_and_mask(generator("onnx sam_detr export"), 2, 64, 96)
    program = torch.export.export(model, inputs, dynamic_shapes=({0: batch, 2: height, 3: width},
                                                                 {0: batch, 1: height, 2: width}))
    return model, program


def test_torch_export_of_sam_detr(sam_detr_export):
    """torch.export.export keeps our ops as single nodes (their fake kernels give the shapes) and the exported
    program equals eager at another batch and image size."""
    model, program = sam_detr_export
    targets = {str(node.target) for node in program.graph.nodes}
    for name in set(samdetr_ops.OP_SPECS) - {"ms_deform_attn"}:  # SAM-DETR has no deformable attention
        assert f"samdetr_ops.{name}.default" in targets
    inputs = images_and_mask(generator("onnx sam_detr torch.export"), *MODEL_RUN_SIZES[1])
    with torch.no_grad():
        expected, got = model(*inputs), program.module()(*inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_sam_detr_runs_in_onnxruntime(sam_detr_export):
    """The whole detector in onnxruntime on CPU equals PyTorch within 1e-4 at two batch and two image sizes."""
    model, exported = sam_detr_export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # optimize=False: the graph optimiser (constant folding of the ResNet) doubles the export time; the op tests
        # export with it on
        program = samdetr_ops.onnx.export(exported, (), opset_version=18, optimize=False, verbose=False)
    assert [value.name for value in program.model.graph.inputs] == ["images", "mask"]  # as the README feeds them
    for B, H, W in MODEL_RUN_SIZES:
        inputs = images_and_mask(generator("onnx sam_detr run", B, H, W), B, H, W)
        with torch.no_grad():
            expected = torch.utils._pytree.tree_leaves(model(*inputs))
        got = run_onnx(program, inputs)
        assert len(got) == len(expected)
        for index, (g, e) in enumerate(zip(got, expected)):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=lambda m: f"output {index} {B}x{H}x{W}: {m}")
