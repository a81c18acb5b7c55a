"""Test-session setup shared by every test.

The 8 simulated CPU devices must be requested before JAX is imported anywhere, so that mesh tests
(data x model = 4 x 2) and single-device tests share one process and one compilation cache.
"""
import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


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
