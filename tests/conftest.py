"""Test-session setup shared by every test.

The 8 simulated CPU devices must be requested before JAX is imported anywhere, so that mesh tests
(data x model = 4 x 2) and single-device tests share one process and one compilation cache.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
