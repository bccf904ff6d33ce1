"""Argument validation (every backend rejects bad input with a message naming the argument), backend selection
and the fallback without the extension."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import samdetr_ops

f32, f64 = torch.float32, torch.float64


def _good(dtype=f32):
    B, C, H, W, N, M, D = 2, 4, 6, 7, 3, 5, 8
    return dict(features=torch.randn(B, C, H, W, dtype=dtype), boxes=torch.rand(B, N, 4, dtype=dtype) * 5,
                points=torch.rand(B, N, M, 2, dtype=dtype) * 2 - 1, weight_logits=torch.randn(B, N, M, C, dtype=dtype),
                cxcywh=torch.rand(B, N, 4, dtype=dtype), embed_logits=torch.randn(B, N, M, D, dtype=dtype))


def _roi(**over):
    a = {**_good(), **over}
    return lambda: samdetr_ops.roi_align(a["features"], a["boxes"], a.get("output_size", 7),
                                         sampling_ratio=a.get("sampling_ratio", -1))


def _sem(**over):
    a = {**_good(), **over}
    return lambda: samdetr_ops.semantic_align(a["features"], a["boxes"], a["points"], a["weight_logits"],
                                              a.get("output_size", 7))


def _pos(**over):
    a = {**_good(), **over}
    return lambda: samdetr_ops.salient_point_pos_embed(a["cxcywh"], a["points"], a["embed_logits"])


BAD = [
    (_roi(features=torch.randn(4, 6, 7)), ValueError, r"`features` must have shape \(B, C, H, W\), got \(4, 6, 7\)"),
    (_roi(boxes=torch.rand(2, 3, 5)), ValueError, r"`boxes` must have shape \(B, N, 4\), got \(2, 3, 5\)"),
    (_roi(boxes=torch.rand(3, 3, 4)), ValueError, r"`boxes` must have shape \(B, N, 4\) with B = 2"),
    (_roi(boxes=torch.rand(2, 3, 4, dtype=f64)), TypeError, r"`boxes` must have the same dtype as `features`"),
    (_roi(features=torch.randint(0, 5, (2, 4, 6, 7))), TypeError, r"`features` must be a floating-point tensor"),
    (_roi(output_size=0), ValueError, r"`output_size` must be an int or an \(h, w\) pair of ints >= 1, got 0"),
    (_roi(sampling_ratio=0), ValueError, r"`sampling_ratio` must be a positive int or -1"),
    (_roi(boxes=[[0, 0, 1, 1]]), TypeError, r"`boxes` must be a torch.Tensor"),
    (_roi(features=[[0.0]]), TypeError, r"`features` must be a torch.Tensor"),
    (_pos(cxcywh=None), TypeError, r"`boxes_cxcywh` must be a torch.Tensor"),
    (_sem(points=torch.rand(2, 3, 5, 3)), ValueError, r"`points` must have shape \(B, N, M, 2\), got \(2, 3, 5, 3\)"),
    (_sem(points=torch.rand(2, 4, 5, 2)), ValueError, r"`points` must have shape \(B, N, M, 2\) with B, N = \(2, 3\)"),
    (_sem(weight_logits=torch.randn(2, 3, 5, 6)), ValueError, r"`weight_logits` must have shape \(B, N, M, C\) with C"),
    (_sem(weight_logits=torch.randn(2, 3, 4, 4)), ValueError, r"with B, N, M = \(2, 3, 5\)"),
    (_sem(weight_logits=torch.randn(2, 3, 5, 4, dtype=f64)), TypeError, r"`weight_logits` must have the same dtype"),
    (_sem(points=torch.rand(2, 3, 5, 2, dtype=torch.float16)), TypeError, r"`points` must have the same dtype"),
    (_pos(embed_logits=torch.randn(2, 3, 5, 7)), ValueError, r"even last dimension D .*got D = 7"),
    (_pos(cxcywh=torch.rand(2, 3, 2)), ValueError, r"`boxes_cxcywh` must have shape \(B, N, 4\)"),
    (_pos(points=torch.rand(2, 3, 4, 2)), ValueError, r"`weight_logits` must have shape \(B, N, M, D\) with B, N, M"),
    (_pos(cxcywh=torch.rand(2, 3, 4, dtype=f64)), TypeError, r"`points` must have the same dtype as `boxes_cxcywh`"),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("call,error,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_raises_a_clear_error(backend, call, error, message):
    with samdetr_ops.use_backend(backend), pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not samdetr_ops.has_extension(), reason="compiled extension not built")
@pytest.mark.parametrize("call,error,message", [
    (lambda g: torch.ops.samdetr_ops.roi_align(g["features"], g["boxes"][:, :, :3]), ValueError,
     r"`boxes` must have shape \(B, N, 4\)"),
    (lambda g: torch.ops.samdetr_ops.semantic_align(g["features"], g["boxes"], g["points"],
                                                    g["weight_logits"][..., :3]),
     ValueError, r"`weight_logits` must have shape \(B, N, M, C\)"),
    (lambda g: torch.ops.samdetr_ops.salient_point_pos_embed(g["cxcywh"], g["points"], g["embed_logits"][..., :7]),
     ValueError, r"even last dimension"),
    (lambda g: torch.ops.samdetr_ops.roi_align(g["features"].int(), g["boxes"].int()), TypeError,
     r"`features` must be a floating-point tensor"),
    (lambda g: torch.ops.samdetr_ops.roi_align_backward(torch.randn(2, 3, 4, 7, 7), g["boxes"], [2, 4, 6], 7, 1.0, -1,
                                                        True), ValueError, r"`feature_shape` must be \(B, C, H, W\)"),
    (lambda g: torch.ops.samdetr_ops.roi_align(g["features"].to(torch.float8_e5m2), g["boxes"].to(torch.float8_e5m2)),
     TypeError, r"the CPU kernel supports float32, float64, float16 and bfloat16"),
], ids=["roi", "semantic", "pos", "integer", "feature-shape", "float8"])
def test_direct_op_calls_are_checked_in_cpp(call, error, message):
    """torch.ops.samdetr_ops.* bypasses the Python checks: the kernels check again, and never read out of bounds."""
    with pytest.raises(error, match=message):
        call(_good())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_are_rejected():
    g = _good()
    with pytest.raises(ValueError, match=r"`boxes` must be on the same device as `features`"):
        samdetr_ops.roi_align(g["features"].cuda(), g["boxes"])


def test_set_backend_and_the_use_backend_context_manager():
    start = samdetr_ops.current_backend()
    with samdetr_ops.use_backend("reference"):
        assert samdetr_ops.current_backend() == "reference"
        with samdetr_ops.use_backend("auto"):
            assert samdetr_ops.current_backend() == "auto"
        assert samdetr_ops.current_backend() == "reference"
    assert samdetr_ops.current_backend() == start
    with pytest.raises(RuntimeError), samdetr_ops.use_backend("reference"):
        raise RuntimeError("the previous backend comes back on an exception too")
    assert samdetr_ops.current_backend() == start
    samdetr_ops.set_backend("reference")
    try:
        assert samdetr_ops.current_backend() == "reference"
    finally:
        samdetr_ops.set_backend(start)
    assert samdetr_ops.current_backend() == start
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        samdetr_ops.set_backend("fastest")
    with pytest.raises(ValueError, match="unknown backend 'fastest'"), samdetr_ops.use_backend("fastest"):
        pass
    assert samdetr_ops.current_backend() == start


def test_available_backends():
    available = samdetr_ops.available_backends("semantic_align", "cpu")
    assert "reference" in available and "auto" not in available
    assert ("cpp" in available) == samdetr_ops.has_extension()


def test_registry_describes_every_op():
    """Each registered op is exported, has its reference, checks, compiled forward and backward and Triton module."""
    import importlib.util

    assert set(samdetr_ops.OP_SPECS) == {"roi_align", "semantic_align", "salient_point_pos_embed", "ms_deform_attn"}
    for name, spec in samdetr_ops.OP_SPECS.items():
        assert getattr(samdetr_ops, name) is spec.public and spec.public.__name__ == name
        assert spec.reference is getattr(samdetr_ops.reference, name)
        assert set(spec.differentiable) <= set(spec.tensor_args)
        assert importlib.util.find_spec(f"samdetr_ops.triton.{spec.triton_module}") is not None
        if samdetr_ops.has_extension():
            for op in (name, name + "_backward"):
                assert torch._C._dispatch_has_kernel_for_dispatch_key(f"samdetr_ops::{op}", "CPU"), op


def test_former_registry_name_warns_and_is_the_registry():
    with pytest.warns(DeprecationWarning, match=r"samdetr_ops\.OPS is deprecated; use samdetr_ops\.OP_SPECS"):
        registry = samdetr_ops.OPS
    assert registry is samdetr_ops.OP_SPECS
    with pytest.raises(AttributeError, match="no attribute 'NOT_A_NAME'"):
        samdetr_ops.NOT_A_NAME


def _package_imports():
    """{module: the samdetr_ops modules it imports} for every Python module of the package, read from its source:
    every import statement, those inside functions (lazy imports) included; a package stands for its __init__.
    `from package import name` reaches the submodule `name` if there is one, else the package's __init__ if that
    defines `name` (else a compiled module such as _C, which imports nothing of ours)."""
    import ast
    import pathlib

    root = pathlib.Path(samdetr_ops.__file__).parent
    files = {".".join(("samdetr_ops",) + p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    trees = {name: ast.parse(path.read_text()) for name, path in files.items()}

    def defines(package, name):
        """Whether the package's __init__ binds `name` at its top level."""
        for node in trees[package].body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bound = {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound = {node.name}
            else:
                bound = {t.id for t in ast.walk(node) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
            if name in bound:
                return True
        return False

    graph = {}
    for name, tree in trees.items():
        package = name if files[name].name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "samdetr_ops")
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else node.module
                if node.level and node.module:
                    base = f"{base}.{node.module}"
                if base.split(".")[0] != "samdetr_ops":
                    continue
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in files:
                        targets.add(submodule)
                    elif base in files and defines(base, alias.name):
                        targets.add(base)
        graph[name] = targets & set(files)
    return graph


def test_no_import_circle_in_the_package():
    """No module of the package imports, directly or through others, a module that imports it (at import time or
    lazily inside a function): each module can be read on its own, below the ones it uses."""
    graph = _package_imports()
    assert "samdetr_ops._registry" in graph["samdetr_ops._extension"]  # the graph is read at all
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module not in done:
            path.append(module)
            for target in sorted(graph[module]):
                visit(target)
            path.pop()
            done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("op", ["roi_align", "semantic_align", "salient_point_pos_embed"])
def test_autocast_computes_in_float32_and_returns_the_input_dtype(op, dtype):
    """As torchvision's roi_align: under torch.autocast the op computes in float32 and returns the dtype of its first
    argument (float32 inputs stay float32, low-precision ones come back in their dtype)."""
    g = _good()
    inputs = {"roi_align": (g["features"], g["boxes"]),
              "semantic_align": (g["features"], g["boxes"], g["points"], g["weight_logits"]),
              "salient_point_pos_embed": (g["cxcywh"], g["points"], g["embed_logits"])}[op]
    fn, reference_fn = getattr(samdetr_ops, op), getattr(samdetr_ops.reference, op)
    low = tuple(t.to(dtype) for t in inputs)
    mixed = (inputs[0],) + low[1:]
    with torch.autocast("cpu", dtype=dtype):
        out_low, out_mixed = fn(*low), fn(*mixed)
    assert out_low.dtype == dtype and out_mixed.dtype == torch.float32
    expected = reference_fn(*(t.float() for t in low))
    torch.testing.assert_close(out_low, expected.to(dtype))
    torch.testing.assert_close(out_mixed, reference_fn(*(t.float() for t in mixed)), atol=1e-5, rtol=1e-5)


def test_reference_backend_runs_the_reference():
    g = _good(f64)
    with samdetr_ops.use_backend("reference"):
        out = samdetr_ops.semantic_align(g["features"], g["boxes"], g["points"], g["weight_logits"])
    expected = samdetr_ops.reference.semantic_align(g["features"], g["boxes"], g["points"], g["weight_logits"])
    assert torch.equal(out, expected)


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_without_the_extension_auto_falls_back_with_one_warning_and_cpp_raises():
    code = """
        import sys, warnings, torch
        sys.modules["samdetr_ops._C"] = None  # makes `from . import _C` fail as if it was never built
        import samdetr_ops
        assert not samdetr_ops.has_extension()
        f, b = torch.randn(1, 2, 5, 5), torch.tensor([[[0.0, 0.0, 3.0, 3.0]]])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            samdetr_ops.roi_align(f, b); samdetr_ops.roi_align(f, b)
        assert len(caught) == 1 and "falling back to the unfused reference" in str(caught[0].message), caught
        try:
            with samdetr_ops.use_backend("cpp"):
                samdetr_ops.roi_align(f, b)
        except RuntimeError as e:
            assert "backend 'cpp' cannot run roi_align on cpu: the compiled extension is not built" in str(e), e
        else:
            raise AssertionError("cpp backend did not raise")
        print("ok")
    """
    result = _python(code)
    assert result.stdout.strip() == "ok", result.stderr


def test_backend_from_environment():
    assert _python("import samdetr_ops; print(samdetr_ops.current_backend())",
                   SAMDETR_OPS_BACKEND="reference").stdout.strip() == "reference"
    result = _python("import samdetr_ops", SAMDETR_OPS_BACKEND="bogus")
    assert result.returncode != 0 and "unknown backend 'bogus'" in result.stderr
