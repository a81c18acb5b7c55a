"""Test-session setup shared by every test.

The 8 simulated CPU devices must be requested before JAX is imported anywhere, so that mesh tests
(data x model = 4 x 2) and single-device tests share one process and one compilation cache.
"""
import atexit
import os
import shutil
import sys
import tempfile

import pytest

# The experiment harness (`scripts/experiments/harness/`, not installed) and the experiment scripts
# import as `harness` and by their module names, as when a script runs from its folder.
EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "scripts", "experiments")
if EXPERIMENTS_DIR not in sys.path:
  sys.path.insert(0, EXPERIMENTS_DIR)

# The mesh tests need 8 host devices: added to whatever XLA_FLAGS the caller set (an empty or
# unrelated XLA_FLAGS would otherwise leave one device and fail them with a misleading error).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def _persistent_compilation_cache() -> None:
  """JAX's persistent compilation cache, one fresh folder per test process (per xdist worker),
  also inherited by the processes tests start: many tests build the same computation more than
  once -- several trainers of one configuration in a test, a CLI run then its resumption in new
  processes -- and jit compiles each anew (it caches by function object, per process). With the
  cache the later ones load the first one's executable (the same code, so the same results):
  e.g. the forward-horizon resume test's three trainers took ~110 s each before, ~25 s after
  the first (2-core CPU). Compiles under 0.5 s are not worth a file. Removed at exit."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return  # Set by the caller: keep it.
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  folder = tempfile.mkdtemp(prefix=f"gbt_t5x_test_jax_cache_{worker}_")
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_configure(config):
  # Not in xdist's controller (with -n), whose environment the workers would inherit: each
  # worker makes its own folder, so no two processes write one folder at once.
  if config.getoption("numprocesses", default=None) and "PYTEST_XDIST_WORKER" not in os.environ:
    return
  _persistent_compilation_cache()


def pytest_collection_modifyitems(items):
  """Modules with `slow` (end-to-end, minutes each) tests run first, keeping each module's tests
  together: with `-n 2 --dist loadfile` (and `--no-loadscope-reorder`, pyproject.toml) each
  worker takes the next module when it is free, so the long modules start early and the short
  ones fill the end instead of one worker finishing a long module alone."""
  module = lambda item: item.nodeid.split("::")[0]
  slow_modules = {module(item) for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: module(item) not in slow_modules)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
  """A results dir per test module (the experiment modules: its demo world and JAX cache are
  built once and shared by the module's `--quick` runs)."""
  return tmp_path_factory.mktemp("results")
