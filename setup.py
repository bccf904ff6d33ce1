"""Builds samdetr_ops._C: the CPU kernels always, the CUDA kernels when a CUDA toolkit is found and either a GPU
is visible or FORCE_CUDA=1 (CI compiles them that way on a machine without a GPU). The package's metadata, version
and dependencies are in pyproject.toml.

    pip install --no-build-isolation -e .     # or without -e: a regular install
"""
import glob
import os
import shutil
import subprocess
import sys

# The `nvcc` on PATH may be a wrapper script, from which torch would guess the wrong toolkit root: prefer the
# standard location unless the user chose one.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True
    return CUDA_HOME is not None and torch.cuda.is_available()


def _links_shared_libstdcxx(compiler: str) -> bool:
    """Whether `compiler` links the shared libstdc++ (it finds libstdc++.so; GCC and Clang print a bare name when
    they do not). Unknown drivers are given the benefit of the doubt."""
    try:
        found = subprocess.run([compiler, "-print-file-name=libstdc++.so"], capture_output=True, text=True,
                               timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return True
    return os.path.isabs(found)


def choose_host_compiler(env) -> None:
    """torch's libraries use the shared libstdc++. A CXX that finds only the static archive (the H200 machine's
    CC/CXX=/opt/gcc wrappers, 2026-12-04) links a second copy of the C++ runtime into _C.so, and the two copies'
    streams do not mix: formatting a number into an error message segfaulted there, in
    tests/test_cuda.py::test_backward_called_directly_with_no_bins_raises_clearly; built with the system g++ the
    same test passed. So on Linux such a CXX is replaced (with a message) by the first of c++, g++ that links the
    shared library, and CC with it; with none, the build stops and says why. `env` is updated in place."""
    cxx = env.get("CXX")
    if not cxx or not sys.platform.startswith("linux") or _links_shared_libstdcxx(cxx):
        return
    current = os.path.realpath(shutil.which(cxx, path=env.get("PATH")) or cxx)
    for alt_cxx, alt_cc in (("c++", "cc"), ("g++", "gcc")):
        path = shutil.which(alt_cxx, path=env.get("PATH"))
        if path and os.path.realpath(path) != current and _links_shared_libstdcxx(path):
            print(f"samdetr_ops: CXX={cxx} finds no shared libstdc++ (it would link a second, static C++ runtime "
                  f"into the extension); building with {path} instead")
            env["CXX"] = path
            if "CC" in env:
                env["CC"] = shutil.which(alt_cc, path=env.get("PATH")) or alt_cc
            return
    raise RuntimeError(f"CXX={cxx} finds no shared libstdc++ and no c++/g++ on PATH does: the extension would carry "
                       "a second, static C++ runtime beside torch's and crash on its first formatted error "
                       "message. Set CXX (and CC) to a compiler that links libstdc++.so.")


def rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cpu_vector_flags() -> list:
    """The ISA of the CPU kernels' at::vec::Vectorized loops (csrc/cpu/cpu_vec.h), fixed at compile time: AVX2 + FMA
    when torch reports this machine can run them, else ATen's portable DEFAULT (scalar arrays, libm).
    SAMDETR_CPU_CAPABILITY=DEFAULT builds for an older CPU than the building machine's."""
    isa = os.environ.get("SAMDETR_CPU_CAPABILITY") or (
        "AVX2" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "DEFAULT")
    quiet = ["-Wno-unknown-pragmas"]  # ATen's vector headers' `#pragma unroll`, once per use otherwise
    if isa == "AVX2":
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"] + quiet
    if isa == "DEFAULT":
        return ["-DCPU_CAPABILITY=DEFAULT"] + quiet
    raise RuntimeError(f"SAMDETR_CPU_CAPABILITY must be AVX2 or DEFAULT, got {isa!r}")


def _extension():
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # at::parallel_for is inlined from torch's headers and only runs in parallel when compiled with OpenMP; the
    # extension then shares torch's own libgomp (same soname, already loaded).
    # -ffp-contract=off: with -mfma GCC fuses a*b+c into one rounding, so a RoI sample position landing exactly on
    # the map's border came out on the other side of it than in torchvision (tests/test_properties.py's border
    # case); the vector loops call their FMAs explicitly and keep them.
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"] + _cpu_vector_flags()
    link_flags = ["-fopenmp"]
    if not _want_cuda():
        print("samdetr_ops: building the CPU kernels (no CUDA: set FORCE_CUDA=1 to compile them without a GPU)")
        return CppExtension("samdetr_ops._C", sources, extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=link_flags)
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # A100 and H100/H200
    sources += rel("csrc/cuda/*.cu")
    print(f"samdetr_ops: building the CPU and CUDA kernels with {CUDA_HOME} for arch "
          f"{os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')}")
    nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]  # torch adds its own -std
    return CUDAExtension("samdetr_ops._C", sources, define_macros=[("SAMDETR_WITH_CUDA", "1")],
                         extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags)


if __name__ == "__main__":  # pip runs this file as __main__ too; tests import it for choose_host_compiler
    choose_host_compiler(os.environ)
    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
