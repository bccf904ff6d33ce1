"""The benchmark cases through pytest-benchmark: `pytest benchmarks/ --benchmark-only`.

Same shapes (the quick preset's first), variants and modes as `python -m benchmarks.bench`, one pytest case
each; every variant's output (and, in forward+backward, its gradients) is checked against the eager reference
before it is timed."""
import pytest
import torch

from benchmarks import bench, cases

pytest.importorskip("pytest_benchmark")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPE = cases.shapes(DEVICE.type, "quick")[0]
INPUTS = [cases.make_inputs(SHAPE, DEVICE, torch.float32, seed) for seed in range(bench.INPUT_SETS)]


# (op, variant) pairs this machine can run: no case is collected just to be skipped
CASES = [(op, variant) for op in cases.OPS for variant in bench.variants(op, DEVICE, None, compile_ref=True)]


@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("op,variant", CASES)
def test_benchmark(benchmark, op, variant, mode):
    available = bench.variants(op, DEVICE, None, compile_ref=True)
    step, first_output, _ = bench.build_runner(op, available[variant], SHAPE, DEVICE, torch.float32, mode, INPUTS,
                                               {})
    if variant != "reference":
        _, reference_output, _ = bench.build_runner(op, available["reference"], SHAPE, DEVICE, torch.float32, mode,
                                                    INPUTS, {})
        bench.check_outputs(first_output(), reference_output(), torch.float32)  # output and gradients
    if DEVICE.type == "cuda":
        def run():
            step()
            torch.cuda.synchronize()
    else:
        run = step
    benchmark.extra_info.update(shape=str(SHAPE), device=DEVICE.type)
    benchmark(run)
