"""Every Triton kernel compiles for a GPU, checked without one.

The interpreter (TRITON_INTERPRET=1, how test_triton.py runs the kernels here) executes kernels as Python and never
compiles them, so it misses what only the compiler refuses (a plain global read inside @triton.jit code, a type
error in a branch) and what only compiled code gets wrong (a Python float argument passed as a 32-bit float).
This test compiles every forward and backward kernel of the three ops ahead of time with `triton.compile` for
sm_90 and sm_80 (Triton's own ptxas; no GPU, no driver), with the exact arguments the launchers pass: each op is
called on CPU tensors with the kernels' launch replaced by a recorder, and each recorded launch is specialised by
Triton's own binder, as a real launch would be.

Which combinations (kept to about two minutes on a 2-core machine): for sm_90 every kernel in every dtype
(float16, bfloat16, float32, float64), the dtypes rotating over the channel cases and the autotune configs, so that
each kernel meets every case and every config; for sm_80 every kernel once, in a dtype and case of its own. The
channel cases are one per code path: a small odd count (masked lanes), the widest count (1024) and a strided
feature layout (the channel stride is not 1, so Triton does not specialise it to a contiguous vector).

The compiling runs in a subprocess: conftest.py sets TRITON_INTERPRET=1 on a machine without a GPU, and kernels
imported under it are interpreter kernels. Run by hand: `python tests/test_triton_compile.py --arch 90`.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import pytest

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float16", "bfloat16", "float32", "float64")
CASES = ("odd", "wide", "strided")  # channel count / layout, one per code path (see the module docstring)


# ---------------------------------------------------------------------------------------------- the subprocess

def _inputs(op, case, dtype):
    """CPU tensors for op's forward and backward launchers (B, N, M small: only the arguments' types matter)."""
    import torch

    C = {"odd": 13, "wide": 1024, "strided": 64}[case]
    B, N, M, H, W = 2, 3, 4, 5, 6
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    if op == "ms_deform_attn":  # D = C channels per head; value, locations, weights contiguous as the launcher makes
        heads, L, P = 2, 3, 4
        shapes = torch.tensor([[5, 6], [3, 3], [1, 2]])
        starts = torch.tensor([0, 30, 39])
        value = randn(B, 41, heads, C)
        locations = torch.rand(B, N, heads, L, P, 2, generator=g).to(dtype)
        weights = torch.rand(B, N, heads, L, P, generator=g).to(dtype)
        forward = (value, shapes, starts, locations, weights)
        return forward, (randn(B, N, heads * C),) + forward + ([True, True, True],)
    if case == "strided":  # every other channel of a wider tensor: channel stride 2
        features = randn(B, H, W, 2 * C).permute(0, 3, 1, 2)[:, ::2]
    else:  # channels-last: channel stride 1
        features = randn(B, H, W, C).permute(0, 3, 1, 2)
    xy = torch.rand(B, N, 2, generator=g) * 4
    boxes = torch.cat([xy, xy + 2], -1).to(dtype)
    points = (torch.rand(B, N, M, 2, generator=g) * 2 - 1).to(dtype)
    size = [7, 5]  # output (h, w), non-square
    if op == "roi_align":
        return ((features, boxes, size, 1 / 3, -1, True),
                (randn(B, N, C, *size), boxes, list(features.shape), size, 1 / 3, -1, True))
    if op == "semantic_align":
        logits = randn(B, N, M, C)
        return ((features, boxes, points, logits, size, 1 / 3, 2, False),
                (randn(B, N, M, C), features, boxes, points, logits, size, 1 / 3, 2, False, [True, True, True]))
    D = C if C % 2 == 0 else 2 * C  # the embedding width must be even; 26 keeps half of it odd
    cxcywh = torch.rand(B, N, 4, generator=g).to(dtype)
    logits = randn(B, N, M, D)
    return (cxcywh, points, logits, 10000.0), (randn(B, N, M, D), cxcywh, points, logits, 10000.0)


def _record_launches(op, case, dtype):
    """[(kernel name, autotuner, args, kwargs)] of every kernel launch the op's forward and backward make."""
    import importlib

    import torch

    module = importlib.import_module(f"samdetr_ops.triton.{op}")
    kernels = {name: k for name, k in vars(module).items() if isinstance(k, triton.runtime.Autotuner)}
    launches = []
    for name, kernel in kernels.items():
        def record(*args, _name=name, _kernel=kernel, grid=None, warmup=None, **kwargs):
            launches.append((_name, _kernel, args, kwargs))
        kernel.run = record
    forward_args, backward_args = _inputs(op, case, getattr(torch, dtype))
    getattr(module, op)(*forward_args)
    getattr(module, op + "_backward")(*backward_args)
    for kernel in kernels.values():
        del kernel.run
    assert {name for name, *_ in launches} == set(kernels), f"{op}: not every kernel was launched"
    return launches


def _compile(kernel, args, kwargs, config, target):
    """Compiles one launch for `target` exactly as JITFunction.run would on such a GPU (same binder, same
    specialisation of the arguments), returning the compiled kernel's signature."""
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    jit = kernel.fn
    kwargs = {**kwargs, **config.all_kwargs(), "debug": False,
              "instrumentation_mode": triton.knobs.compilation.instrumentation_mode}
    backend = make_backend(target)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound_args, specialization, options)
    triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target, options=options.__dict__)
    return signature


def plan(arch):
    """[(op, case, dtype, config index)] to compile for sm_<arch>: see the module docstring."""
    ops = ("roi_align", "semantic_align", "salient_point_pos_embed", "ms_deform_attn")
    if arch == 90:
        return [(op, CASES[i % len(CASES)], dtype, i) for op in ops for i, dtype in enumerate(DTYPES)]
    return [(op, CASES[(j + 1) % len(CASES)], DTYPES[(j + 1) % len(DTYPES)], j) for j, op in enumerate(ops)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (sm_90) or 80")
    arch = parser.parse_args(argv).arch
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    results = []
    for op, case, dtype, turn in plan(arch):
        for name, kernel, args, kwargs in _record_launches(op, case, dtype):
            config = kernel.configs[turn % len(kernel.configs)]
            start = time.perf_counter()
            entry = dict(kernel=f"{op}.{name}", case=case, dtype=dtype, num_warps=config.num_warps,
                         configs=len(kernel.configs), uses_atomics="atomic_add" in _source_with_callees(kernel.fn))
            try:
                signature = _compile(kernel, args, kwargs, config, target)
                entry["float_args"] = sorted({signature[k] for k, v in zip(kernel.fn.arg_names, args)
                                              if isinstance(v, float)})
            except Exception as error:  # reported, with the kernel and arguments, by the pytest side
                entry["error"] = f"{type(error).__name__}: {error}"
            entry["seconds"] = round(time.perf_counter() - start, 2)
            results.append(entry)
            print(json.dumps(entry), flush=True)


def _source_with_callees(jit_fn, seen=None):
    """The source of a JITFunction and of every @triton.jit function it calls (found by name in its globals)."""
    seen = set() if seen is None else seen
    if jit_fn in seen:
        return ""
    seen.add(jit_fn)
    text = jit_fn.src
    for value in jit_fn.fn.__globals__.values():
        if isinstance(value, triton.runtime.JITFunction) and value.__name__ in text:
            text += _source_with_callees(value, seen)
    return text


# ------------------------------------------------------------------------------------------------ the tests

def _compile_all(arch, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # a fresh cache: every kernel really compiles
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--arch", str(arch)], env=env,
                          capture_output=True, text=True, timeout=600)
    entries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and entries, f"compile run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return entries


def _check(entries, arch):
    failures = [f"{e['kernel']} ({e['dtype']}, {e['case']}, num_warps={e['num_warps']}): {e['error']}"
                for e in entries if "error" in e]
    assert not failures, f"{len(failures)} of {len(entries)} kernels do not compile for sm_{arch}:\n" + \
        "\n\n".join(f[:1500] for f in failures)
    # a Python float must reach the kernel as a float64: as a 32-bit float, float64 inputs lose precision
    narrowed = [e["kernel"] for e in entries if any(t != "fp64" for t in e["float_args"])]
    assert not narrowed, f"float arguments not annotated tl.float64: {sorted(set(narrowed))}"
    # autotuning an atomic accumulation runs every config into the same buffer on a new shape's first call
    tuned_atomics = [e["kernel"] for e in entries if e["uses_atomics"] and e["configs"] > 1]
    assert not tuned_atomics, f"kernels that accumulate with atomics are autotuned: {sorted(set(tuned_atomics))}"


@pytest.mark.parametrize("arch", [90, 80], ids=["sm90", "sm80"])
def test_every_kernel_compiles_for_the_gpu(arch, tmp_path):
    entries = _compile_all(arch, tmp_path)
    _check(entries, arch)
    kernels = {e["kernel"] for e in entries}
    assert len(kernels) == 8, kernels  # forward and backward of four ops
    if arch == 90:  # every kernel in every dtype, every channel case and every autotune config
        for kernel in kernels:
            mine = [e for e in entries if e["kernel"] == kernel]
            assert {e["dtype"] for e in mine} == set(DTYPES), kernel
            assert {e["case"] for e in mine} == set(CASES), kernel
            assert len({e["num_warps"] for e in mine}) == mine[0]["configs"], kernel



if __name__ == "__main__":
    main()
