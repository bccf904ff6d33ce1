"""setup.py's choice of host compiler: a CXX that would link a second, static libstdc++ into the extension (which
crashed on the H200 machine, 2026-12-04) is replaced by one that links the shared library, or the build stops."""
import importlib.util
import os
import stat
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_setup_module():
    spec = importlib.util.spec_from_file_location("samdetr_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # under another __name__: defines the helpers, runs no build
    return module


def fake_compiler(folder, name, libstdcxx_so):
    """A compiler driver that answers -print-file-name=libstdc++.so as GCC does: a path when it has the shared
    library, the bare name when it has not."""
    path = folder / name
    answer = str(libstdcxx_so) if libstdcxx_so else "libstdc++.so"
    path.write_text(f"#!/bin/sh\necho '{answer}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check runs on Linux only")


@pytest.fixture
def toolchain(tmp_path):
    shared = tmp_path / "libstdc++.so"
    shared.write_text("")
    (tmp_path / "static").mkdir()
    (tmp_path / "system").mkdir()
    static_cxx = fake_compiler(tmp_path / "static", "g++", None)
    static_cc = fake_compiler(tmp_path / "static", "gcc", None)
    return tmp_path, shared, static_cxx, static_cc


def test_static_only_cxx_is_replaced_by_one_with_the_shared_library(toolchain):
    tmp_path, shared, static_cxx, static_cc = toolchain
    system_cxx = fake_compiler(tmp_path / "system", "c++", shared)
    system_cc = fake_compiler(tmp_path / "system", "cc", shared)
    env = {"CXX": static_cxx, "CC": static_cc, "PATH": f"{tmp_path / 'static'}:{tmp_path / 'system'}"}
    load_setup_module().choose_host_compiler(env)
    assert env["CXX"] == system_cxx and env["CC"] == system_cc


def test_cxx_with_the_shared_library_is_kept(toolchain):
    tmp_path, shared, _, _ = toolchain
    good = fake_compiler(tmp_path / "system", "g++", shared)
    env = {"CXX": good, "CC": "gcc", "PATH": str(tmp_path / "system")}
    load_setup_module().choose_host_compiler(env)
    assert env == {"CXX": good, "CC": "gcc", "PATH": str(tmp_path / "system")}


def test_no_compiler_with_the_shared_library_stops_the_build_saying_why(toolchain):
    tmp_path, _, static_cxx, _ = toolchain
    env = {"CXX": static_cxx, "PATH": str(tmp_path / "static")}
    with pytest.raises(RuntimeError, match="finds no shared libstdc\\+\\+"):
        load_setup_module().choose_host_compiler(env)


def test_this_machines_default_compiler_links_the_shared_library():
    """The build here (CI) keeps its compiler: the check must not fire on an ordinary toolchain."""
    module = load_setup_module()
    env = {"CXX": os.environ.get("CXX", "c++"), "PATH": os.environ["PATH"]}
    module.choose_host_compiler(env)
    assert env["CXX"] == os.environ.get("CXX", "c++")
