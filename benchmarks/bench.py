"""Fused vs unfused: latency, autograd-saved memory, (on CUDA) peak memory, and each op's floor (a lower bound).

    python -m benchmarks.bench                 # --quick: a few SAM-DETR shapes, minutes on a 2-core CPU
    python -m benchmarks.bench --full          # every SAM-DETR shape (N 100/300/900, B 1/4/8, 25x38 and 50x76)
    python -m benchmarks.bench --ops semantic_align --modes forward+backward --dtype bfloat16 --backend cpp

Variants: each fused backend available here (cpp, triton), the eager reference sequence ("reference") and
torch.compile of it ("compiled-ref"). Every variant's output is checked against the eager reference before it
is timed. Results: a table on stdout (speed-up = eager reference time / variant time), one CSV row per
measurement and a PNG plot under benchmarks/results/.
"""
import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import time
from typing import NamedTuple

import torch

import samdetr_ops
from benchmarks import cases
from samdetr_ops.nn import SemanticAligner

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
INPUT_SETS = 3  # inputs rotate through this many independent sets, so no cache holds one set for every call
CHECK_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-9, rtol=1e-9),
             # one bf16 rounding of values of magnitude ~3 is 2^-8 * 3 ~ 1e-2; half likewise at 2^-11
             torch.bfloat16: dict(atol=5e-2, rtol=2e-2), torch.float16: dict(atol=1e-2, rtol=5e-3)}


# ----------------------------------------------------------------------------------------------------- timing
def time_cpu(fn, min_run_time):
    from torch.utils import benchmark
    fn()  # warm-up
    # Timer runs single-threaded unless told otherwise; measure with the threads torch uses.
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = sorted(m.times)
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))] * 1e3  # noqa: E731
    return m.median * 1e3, q(0.2), q(0.8)


def time_cuda(fn):
    try:
        from triton.testing import do_bench
        p50, p20, p80 = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return p50, p20, p80
    except ImportError:  # CUDA events
        for _ in range(5):
            fn()
        times = []
        for _ in range(50):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        return times[len(times) // 2], times[len(times) // 5], times[4 * len(times) // 5]


def copy_bandwidth(device):
    """Bytes/s of a large device-to-device copy (read + write), measured now, on this card."""
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    ms, _, _ = time_cuda(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3)


def launch_time(device):
    x = torch.empty(1, device=device)
    ms, _, _ = time_cuda(lambda: x.zero_())
    return ms


# ------------------------------------------------------------------------------------------------ CPU floor
def cpu_rates():
    """This CPU's rates, measured now with torch's threads: copy bytes/s (read + write of 64 MiB), float32 flop/s
    of a 1024 x 1024 matmul (the multiply-add peak we can reach), and elements/s of torch's vectorised float32
    sin, cos and exp on a cache-resident vector."""
    x = torch.empty(64 * 2**20, dtype=torch.uint8)
    y = torch.empty_like(x)
    rates = {"copy": 2 * x.numel() / (time_cpu(lambda: y.copy_(x), 0.2)[0] * 1e-3)}
    a = torch.randn(1024, 1024)
    rates["flop"] = 2 * 1024**3 / (time_cpu(lambda: a @ a, 0.2)[0] * 1e-3)
    v = torch.randn(2**16)
    for fn in ("sin", "cos", "exp"):
        rates[fn] = v.numel() / (time_cpu(getattr(v, fn), 0.2)[0] * 1e-3)
    return rates


def on_map_samples(start, size, grid, length, S=7):
    """(R, S) count of RoIAlign samples of each bin along one axis that land on [-1, length] (the ones read)."""
    i = torch.arange(int(grid.max().item()) if grid.numel() else 0, dtype=start.dtype)
    pos = start[:, None, None] + torch.arange(S, dtype=start.dtype)[None, :, None] * size[:, None, None] \
        + (i + 0.5)[None, None, :] * (size / grid)[:, None, None]
    return ((i[None, None, :] < grid[:, None, None]) & (pos >= -1) & (pos <= length)).sum(-1)


def cpu_floor_ms(op, shape, dtype, x, rates):
    """A lower bound on one forward on this CPU: max(minimum bytes at the copy rate, arithmetic at the measured
    peak). Arithmetic: roi_align 4 multiply-adds per on-map sample and channel; semantic_align those of the bins
    its points touch, 4 per corner and channel, and one exp per output (the sigmoid); the position embedding
    half a sin, half a cos and one exp per output; ms_deform_attn 5 multiply-adds per sample and channel (4
    bilinear corners, the attention weight). float16/bfloat16 compute in float32: same rates."""
    memory = cases.min_bytes(op, shape, dtype.itemsize) / rates["copy"]
    B, N, M, C, H, W, S = shape.B, shape.N, shape.M, shape.C, shape.H, shape.W, 7
    if op == "salient_point_pos_embed":
        outputs = B * N * M * C
        return 1e3 * max(memory, outputs * (0.5 / rates["sin"] + 0.5 / rates["cos"] + 1 / rates["exp"]))
    if op == "ms_deform_attn":  # 4 corners x a multiply-add, and the attention weight's, per sample and channel
        queries, heads, levels, points = x["msda_weights"].shape[1:]
        samples = B * queries * heads * levels * points
        return 1e3 * max(memory, 10 * samples * (C // heads) / rates["flop"])
    boxes = x["boxes"].double().reshape(-1, 4)  # aligned=True: offset 0.5, spatial_scale 1
    start, extent = boxes[:, :2] - 0.5, boxes[:, 2:] - boxes[:, :2]
    grid = torch.ceil(extent / S).clamp(min=1)
    samples = on_map_samples(start[:, 1], extent[:, 1] / S, grid[:, 1], H)[:, :, None] \
        * on_map_samples(start[:, 0], extent[:, 0] / S, grid[:, 0], W)[:, None, :]  # (R, S, S)
    if op == "roi_align":
        return 1e3 * max(memory, 8 * C * samples.sum().item() / rates["flop"])
    # semantic_align: the bins grid_sample's corners touch (align_corners=False over the S x S grid)
    p = x["points"].double().reshape(B * N, M, 2)
    corner = torch.floor(((p + 1) * S - 1) / 2).long()[..., None, :] + torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    on_grid = ((corner >= 0) & (corner < S)).all(-1)
    touched = torch.zeros(B * N, S * S + 1, dtype=torch.bool)
    touched.scatter_(1, torch.where(on_grid, corner[..., 1] * S + corner[..., 0], S * S).flatten(1), True)
    flops = 8 * C * (samples.flatten(1) * touched[:, :-1]).sum().item() + 2 * C * on_grid.sum().item()
    return 1e3 * max(memory, flops / rates["flop"] + B * N * M * C / rates["exp"])


# ----------------------------------------------------------------------------------------------------- memory
def saved_bytes(run, inputs):
    """Bytes autograd keeps for backward during `run()`: (all saved storages, those that are not the inputs')."""
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    del out
    return sum(seen.values()), sum(v for k, v in seen.items() if k not in input_ptrs)


def peak_bytes(run, device):
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# --------------------------------------------------------------------------------------------------- variants
def variants(op, device, wanted, compile_ref):
    """name -> implementation module (an object with roi_align / semantic_align / salient_point_pos_embed)."""
    out = {"reference": cases.REFERENCE}
    if compile_ref:
        out["compiled-ref"] = "compile"
    available = samdetr_ops.available_backends(op if op != "aligner_block" else "semantic_align", device)
    for backend in ("cpp", "triton"):
        if backend in available:
            out[backend] = cases.BackendOps(backend)
    return {k: v for k, v in out.items() if wanted is None or k in wanted or k == "reference"}


def build_runner(op, impl, shape, device, dtype, mode, input_sets, compiled_cache):
    """(step, first_output, inputs): a zero-argument callable doing one measured step (rotating input sets), one
    returning the first set's output, and the first set's tensors (inputs, parameters) for the saved-memory count."""
    if op == "aligner_block":
        return build_block_runner(impl, shape, device, dtype, mode, input_sets, compiled_cache)
    call, grad_names = cases.op_call(op)
    if impl == "compile":
        key = op  # one compiled function per op: forward and forward+backward share its artifacts
        if key not in compiled_cache:
            compiled_cache[key] = torch.compile(lambda x: call(cases.REFERENCE, x), dynamic=False)
        fn = compiled_cache[key]
    else:
        fn = lambda x: call(impl, x)  # noqa: E731
    prepared = []
    for x in input_sets:
        x = dict(x)
        if mode != "inference":
            for n in grad_names:
                x[n] = x[n].detach().requires_grad_()
        prepared.append(x)
    state = {"i": 0}

    def step():
        x = prepared[state["i"] % len(prepared)]
        state["i"] += 1
        if mode == "inference":
            with torch.no_grad():
                return fn(x)
        out = fn(x)
        if mode == "forward+backward":
            # autograd.grad returns fresh gradients: nothing accumulates between runs
            torch.autograd.grad(out, [x[n] for n in grad_names], torch.ones_like(out))
        return out

    def first_output():
        """[output] (inference, forward) or [output, every input gradient] (forward+backward), first input set."""
        x = prepared[0]
        if mode != "forward+backward":
            with torch.no_grad():
                return [fn(x)]
        out = fn(x)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        return [out.detach()] + list(torch.autograd.grad(out, [x[n] for n in grad_names], grad_out))

    return step, first_output, list(prepared[0].values())  # every input of the first set, differentiable ones included


def build_block_runner(impl, shape, device, dtype, mode, input_sets, compiled_cache):
    """SAM-DETR's semantics aligner block (roi_align -> point ConvNet/MLP -> salient-point sampling ->
    reweighting -> position embedding): nn.SemanticAligner on the fused ops (a backend), or in its official order
    on the reference ops (implementation="reference"), eager or compiled."""
    backend = "reference" if impl is cases.REFERENCE else (None if impl == "compile" else impl.backend)
    key = ("block", shape.C, shape.M, device, dtype)
    if key not in compiled_cache:
        # The reference (eager and compiled) is the official sequence, implementation="reference"; the fused block
        # has the same weights and runs on the backend under test.
        torch.manual_seed(0)
        fused = SemanticAligner(shape.C, shape.M).to(device=device, dtype=dtype)
        official = SemanticAligner(shape.C, shape.M, implementation="reference").to(device=device, dtype=dtype)
        official.load_state_dict(fused.state_dict())
        compiled_cache[key] = {"fused": fused, "official": official}
    block = compiled_cache[key]["official" if backend in ("reference", None) else "fused"]
    if backend is None:
        ckey = ("block-compiled", key, mode)
        if ckey not in compiled_cache:
            compiled_cache[ckey] = torch.compile(block, dynamic=False)
        forward = compiled_cache[ckey]
    else:
        def forward(*args):
            with samdetr_ops.use_backend(backend):
                return block(*args)
    prepared = [(x["features"].detach().requires_grad_(mode != "inference"), x["cxcywh"],
                 x["query"].detach().requires_grad_(mode != "inference")) for x in input_sets]
    params = list(block.parameters())
    state = {"i": 0}

    def step():
        memory, ref_boxes, query = prepared[state["i"] % len(prepared)]
        state["i"] += 1
        if mode == "inference":
            with torch.no_grad():
                return forward(memory, ref_boxes, query)
        q, pos, _ = forward(memory, ref_boxes, query)
        if mode == "forward+backward":
            torch.autograd.grad((q.sum() + pos.sum(),), [memory, query] + params)
        return q

    def first_output():
        """[q, pos] or, in forward+backward, also the gradients of the memory, the query and every parameter."""
        if mode != "forward+backward":
            with torch.no_grad():
                return list(forward(*prepared[0])[:2])
        memory, ref_boxes, query = prepared[0]
        q, pos, _ = forward(memory, ref_boxes, query)
        g = torch.Generator().manual_seed(1)
        grad_q, grad_pos = (torch.randn(t.shape, generator=g).to(t) for t in (q, pos))
        grads = torch.autograd.grad((q, pos), [memory, query] + params, (grad_q, grad_pos))
        return [q.detach(), pos.detach()] + list(grads)

    return step, first_output, list(prepared[0]) + params


# ----------------------------------------------------------------------------------------------------- main
def environment(device):
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(RESULTS)).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return dict(device=device.type, card=card, torch=torch.__version__, cuda=torch.version.cuda or "none",
                commit=commit)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", dest="preset", action="store_const", const="quick", help="default")
    preset.add_argument("--full", dest="preset", action="store_const", const="full")
    p.add_argument("--device", default=None, help="cuda when present, else cpu")
    p.add_argument("--ops", nargs="+", default=list(cases.OPS), choices=cases.OPS)
    p.add_argument("--modes", nargs="+", default=list(cases.MODES), choices=cases.MODES)
    p.add_argument("--dtype", nargs="+", default=None,
                   help="float32 on CPU; float32 and bfloat16 on CUDA by default")
    p.add_argument("--backend", nargs="+", default=None,
                   help="variants to time besides the eager reference: cpp triton compiled-ref (default: all)")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per CPU measurement")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds after which no new case starts (the results so far are still written)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    args.preset = args.preset or "quick"
    return args


class Floors(NamedTuple):
    """This machine's rates for the floors, measured once per run: CUDA copy bytes/s and launch ms, or the CPU's
    cpu_rates(); None where they do not apply."""
    copy_bandwidth: float = None
    launch_ms: float = None
    cpu_rates: dict = None


def measure_floors(device):
    if device.type == "cuda":
        return Floors(copy_bandwidth=copy_bandwidth(device), launch_ms=launch_time(device))
    return Floors(cpu_rates=cpu_rates() if device.type == "cpu" else None)


def floor_ms(op, shape, dtype, mode, inputs, floors):
    """The op's lower bound for one forward (None for forward+backward and for the aligner block)."""
    if mode == "forward+backward" or op == "aligner_block":
        return None
    if floors.copy_bandwidth:
        return max(floors.launch_ms, cases.min_bytes(op, shape, dtype.itemsize) / floors.copy_bandwidth * 1e3)
    if floors.cpu_rates:
        return cpu_floor_ms(op, shape, dtype, inputs, floors.cpu_rates)
    return None


def checked_runners(case, input_sets, impls, device, compiled_cache, failures):
    """(name, step, held) of each variant of `impls` in turn, once its first output (and gradients) passed
    check_outputs against the eager reference's. A variant that fails is reported in `failures` and not timed;
    when the eager reference itself fails, nothing after it runs."""
    op, shape, dtype, mode = case
    reference_output = float32_truth = None
    if dtype in (torch.float16, torch.bfloat16):
        # The fused ops in half precision are checked against the float32 reference on the same rounded
        # inputs: the eager reference in half precision is itself much further from it than they are
        # (bfloat16 semantic_align point gradient, CPU: 0.19 vs 0.0023 relative error in norm).
        wide_sets = [{k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in x.items()}
                     for x in input_sets]
        float32_truth = build_runner(op, cases.REFERENCE, shape, device, torch.float32, mode, wide_sets,
                                     compiled_cache)[1]()
    for name, impl in impls.items():
        try:
            step, first_output, held = build_runner(op, impl, shape, device, dtype, mode, input_sets, compiled_cache)
            out = first_output()
            if name == "reference":
                reference_output = out
            elif float32_truth is None:
                check_outputs(out, reference_output, dtype, op)
            elif name != "compiled-ref":
                # (the compiled reference in half precision is as far from float32 as the eager one, and
                # both differ from each other by as much: torch's, not ours to check)
                check_outputs(out, float32_truth, dtype, op)
        except Exception as error:  # a variant that fails its check is reported, not timed
            failures.append(f"{op} {shape} {dtype} {mode} {name}: {type(error).__name__}: {error}"[:400])
            if reference_output is None:  # the eager reference itself failed: nothing to compare against
                return
            continue
        yield name, step, held


def measured_row(case, name, step, held, inputs, device, min_run_time, floors, env):
    """One CSV row: the variant's time quantiles, autograd-saved and peak memory, and the op's floor."""
    op, shape, dtype, mode = case
    if device.type == "cuda":
        median, p20, p80 = time_cuda(step)
    else:
        median, p20, p80 = time_cpu(step, min_run_time)
    saved_all, saved_extra = (saved_bytes(step, held) if mode != "inference" else (0, 0))
    floor = floor_ms(op, shape, dtype, mode, inputs, floors)
    return dict(env, timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), op=op,
                variant=name, mode=mode, dtype=str(dtype).replace("torch.", ""), B=shape.B, N=shape.N, M=shape.M,
                C=shape.C, H=shape.H, W=shape.W, median_ms=median, p20_ms=p20, p80_ms=p80, saved_bytes=saved_all,
                saved_beyond_inputs_bytes=saved_extra, peak_bytes=peak_bytes(step, device), floor_ms=floor)


def progress_bar(total):
    try:
        from tqdm import tqdm
        return tqdm(total=total, file=sys.stderr, desc="bench", dynamic_ncols=True)
    except ImportError:
        return None


def run_cases(tasks, args, device, env, floors):
    """Checks and times every variant of every (op, shape, dtype, mode) of `tasks`; cases that would start after
    --time-budget are skipped. Returns (rows, failures, number skipped)."""
    min_run_time = args.min_run_time or (0.5 if args.preset == "quick" else 1.0)
    compile_ref = args.backend is None or "compiled-ref" in args.backend
    # Each compiled reference is a deliberate static specialisation per (op, shape, dtype, mode), and dynamo keeps
    # them on one code object: past its default of 8 it warns ("hit config.recompile_limit") between the progress
    # bar and the table and runs the rest eagerly, which would mislabel eager times as compiled.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(tasks))
    progress = progress_bar(len(tasks))
    rows, compiled_cache, failures = [], {}, []
    input_cache = {}  # the inputs of one (shape, dtype) at a time
    started, skipped = time.monotonic(), 0
    for case in tasks:
        op, shape, dtype, mode = case
        if args.time_budget is not None and time.monotonic() - started > args.time_budget:
            skipped += 1
            continue
        if progress:
            progress.set_postfix_str(f"{op} {shape} {str(dtype)[6:]} {mode}")
        if (shape, dtype) not in input_cache:
            input_cache.clear()
            input_cache[shape, dtype] = [cases.make_inputs(shape, device, dtype, seed) for seed in range(INPUT_SETS)]
        input_sets = input_cache[shape, dtype]
        impls = variants(op, device, args.backend, compile_ref)
        for name, step, held in checked_runners(case, input_sets, impls, device, compiled_cache, failures):
            rows.append(measured_row(case, name, step, held, input_sets[0], device, min_run_time, floors, env))
        if progress:
            progress.update()
    if progress:
        progress.close()
    return rows, failures, skipped


def write_results(rows, args, device, env, skipped):
    """The CSV (and the PNG plot) under --out."""
    os.makedirs(args.out, exist_ok=True)
    slug = "cpu" if device.type == "cpu" else env["card"].replace(" ", "-").replace("/", "-")
    # a filtered or cut-short run gets its own file, so it never overwrites the results of a whole preset
    filtered = (args.ops != list(cases.OPS) or args.modes != list(cases.MODES) or args.dtype is not None
                or args.backend is not None or skipped > 0)
    path = os.path.join(args.out, f"bench-{slug}-{args.preset}{'-partial' if filtered else ''}.csv")
    write_csv(rows, path)
    print(f"\nCSV: {os.path.relpath(path)}")
    if not args.no_plot:
        png = path[:-4] + ".png"
        try:
            plot(rows, png, env)
            print(f"plot: {os.path.relpath(png)}")
        except ImportError as error:
            print(f"no plot: {error} (pip install matplotlib)")


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = [getattr(torch, d) for d in (args.dtype or (["float32", "bfloat16"] if device.type == "cuda"
                                                          else ["float32"]))]
    env = environment(device)
    floors = measure_floors(device)
    tasks = [(op, shape, dtype, mode) for op in args.ops for shape in cases.shapes(device.type, args.preset)
             for dtype in dtypes for mode in args.modes]
    rows, failures, skipped = run_cases(tasks, args, device, env, floors)
    add_speedups(rows)
    print_table(rows, env)
    if skipped:
        print(f"\n{skipped} of {len(tasks)} cases not run: --time-budget {args.time_budget:g} s ran out")
    write_results(rows, args, device, env, skipped)
    if failures:
        print("\nFAILED CHECKS (not timed):\n  " + "\n  ".join(failures))
        return 1
    return 0


# Half precision, relative error in norm: the aligner block runs its point MLP (4 layers) in half precision on its
# own rounded weights, measured 0.054-0.070 in bfloat16 for the fused ops and the compiled reference alike (CPU)
HALF_NORM_TOL = {"aligner_block": 1e-1}


def check_outputs(got, expected, dtype, op=None):
    """Each variant's output and, in forward+backward, every input gradient, against the eager reference's (half
    precision: the float32 reference's). A gradient sums many products, so the absolute tolerance scales with its
    largest value (a scrambled gradient, as the first GPU run found in the CUDA backwards, still fails by orders
    of magnitude)."""
    names = ["output"] + [f"gradient {i}" for i in range(1, len(expected))]
    for name, a, b in zip(names, got, expected):
        if dtype in (torch.float16, torch.bfloat16):
            # Against the float32 truth, half precision is judged as a whole, by relative error in norm: the point
            # gradient jumps where a point crosses a bin boundary (rounding moves a few elements by O(1)), and the
            # aligner block's half-precision MLP (its own rounded weights) drifts elementwise.
            error = ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()
            allowed = HALF_NORM_TOL.get(op, 5e-2)
            if not error < allowed:
                raise AssertionError(f"{name}: relative error in norm {error:.3g} (at most {allowed:g} allowed)")
            continue
        tol = dict(CHECK_TOL[dtype])
        tol["atol"] *= max(1.0, b.abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a.float(), b.float(), **tol, msg=lambda m: f"{name}: {m}")


def add_speedups(rows):
    ref = {(r["op"], r["mode"], r["dtype"], r["B"], r["N"], r["H"], r["W"]): r for r in rows
           if r["variant"] == "reference"}
    for r in rows:
        base = ref.get((r["op"], r["mode"], r["dtype"], r["B"], r["N"], r["H"], r["W"]))
        r["speedup_vs_eager"] = base["median_ms"] / r["median_ms"] if base else None
        r["saved_ratio_vs_eager"] = (base["saved_bytes"] / r["saved_bytes"]
                                     if base and r["saved_bytes"] else None)


def print_table(rows, env):
    print(f"\nsamdetr_ops benchmark on {env['card']} (torch {env['torch']}, CUDA {env['cuda']}, "
          f"commit {env['commit']})")
    print("time: median ms [20%-80%]; speed-up vs the eager reference; saved: MB autograd keeps for backward")
    header = f"{'op':<24}{'shape':<18}{'dtype':<9}{'mode':<17}{'variant':<13}{'time ms':>22}{'speed-up':>10}" \
             f"{'saved MB':>10}{'peak MB':>9}{'x floor':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        shape = f"B{r['B']} N{r['N']} {r['H']}x{r['W']}"
        t = f"{r['median_ms']:.3f} [{r['p20_ms']:.3f}-{r['p80_ms']:.3f}]"
        sp = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-"
        saved = f"{r['saved_bytes'] / 2**20:.1f}" if r["mode"] != "inference" else "-"
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] is not None else "-"
        floor = f"{r['median_ms'] / r['floor_ms']:.1f}" if r["floor_ms"] else "-"
        print(f"{r['op']:<24}{shape:<18}{r['dtype']:<9}{r['mode']:<17}{r['variant']:<13}{t:>22}{sp:>10}"
              f"{saved:>10}{peak:>9}{floor:>8}")


def write_csv(rows, path):
    if not rows:
        return
    fields = list(rows[0].keys())
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def plot(rows, path, env):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ops = list(dict.fromkeys(r["op"] for r in rows))
    fig, axes = plt.subplots(len(ops), 2, figsize=(15, 3.2 * len(ops)), squeeze=False)
    for row_axes, op in zip(axes, ops):
        op_rows = [r for r in rows if r["op"] == op]
        groups = list(dict.fromkeys(f"B{r['B']} N{r['N']} {r['H']}x{r['W']}\n{r['dtype']} {r['mode']}"
                                    for r in op_rows))
        names = [v for v in dict.fromkeys(r["variant"] for r in op_rows)]
        width = 0.8 / max(1, len(names))
        for panel, (ax, metric) in enumerate(zip(row_axes, ("speedup_vs_eager", "saved_ratio_vs_eager"))):
            for i, name in enumerate(names):
                values = []
                for grp in groups:
                    match = [r for r in op_rows if r["variant"] == name and
                             f"B{r['B']} N{r['N']} {r['H']}x{r['W']}\n{r['dtype']} {r['mode']}" == grp]
                    values.append((match[0][metric] or 0) if match else 0)
                ax.bar([g + i * width for g in range(len(groups))], values, width, label=name)
            ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
            ax.set_xticklabels(groups, fontsize=6)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"{op}: " + ("speed-up vs eager reference" if panel == 0
                                      else "autograd-saved memory, reference / variant"), fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(f"samdetr_ops on {env['card']} (torch {env['torch']}, commit {env['commit']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
