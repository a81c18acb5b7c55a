"""A local GCS emulator (PyPI `gcp-storage-emulator`) on 127.0.0.1 for `gs://` model-dir tests.

Who reads it and how:
  - etils.epath (our `gbt_t5x.fileio` and orbax's folders/JSON) through gcsfs, selected by
    `EPATH_USE_TF=false` and pointed at the emulator by `STORAGE_EMULATOR_HOST`;
  - tensorstore (orbax's array writes) through its own GCS driver, pointed at it by
    `TENSORSTORE_GCS_HTTP_URL`, with `GOOGLE_AUTH_TOKEN_FOR_TESTING` as a dummy credential.
TensorFlow's own `gs://` client has no endpoint override, which is why the file layer uses
epath (and TensorBoard events are staged locally and copied through it).

The emulator's media downloads lack the `x-goog-generation` header that real GCS sends and
tensorstore needs (it reports "Malformed StorageGeneration" without it), so this module starts
the emulator through its own `__main__`, which adds that header (and the metageneration).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

BUCKET = "gbt-t5x-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_for(endpoint: str) -> dict[str, str]:
  """Environment variables that send epath (gcsfs) and tensorstore to the emulator."""
  return {"STORAGE_EMULATOR_HOST": endpoint, "TENSORSTORE_GCS_HTTP_URL": endpoint,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "EPATH_USE_TF": "false",
          "GOOGLE_CLOUD_PROJECT": "test", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
          "NO_GCE_CHECK": "true", "FSSPEC_GS_TOKEN": "anon", "FSSPEC_GS_PROJECT": "test"}


@contextlib.contextmanager
def running_emulator(timeout_s: float = 30.0) -> Iterator[str]:
  """Starts an in-memory emulator with bucket `BUCKET`; yields its endpoint URL."""
  import pytest
  pytest.importorskip("gcp_storage_emulator")
  pytest.importorskip("gcsfs")
  port = _free_port()
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  endpoint = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + timeout_s
    while True:
      with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        break
      if proc.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"the GCS emulator did not start (rc={proc.poll()})")
      time.sleep(0.1)
    yield endpoint
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def filesystem(endpoint: str):
  """A gcsfs filesystem on the emulator (for test-side listing, reading and copying)."""
  from gcsfs.core import GCSFileSystem  # Not the "extended" one, which probes gRPC endpoints.
  return GCSFileSystem(endpoint_url=endpoint, token="anon", project="test",
                       skip_instance_cache=True)


def download(endpoint: str, prefix: str, dest) -> list[str]:
  """Copies every object under `BUCKET/prefix` into local folder `dest`; returns their keys."""
  import pathlib
  fs = filesystem(endpoint)
  root = f"{BUCKET}/{prefix.strip('/')}"
  keys = sorted(fs.find(root))
  for key in keys:
    target = pathlib.Path(dest) / key[len(root) + 1:]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(fs.cat_file(key))
  return keys


@contextlib.contextmanager
def env_set(values: dict[str, str]) -> Iterator[None]:
  """Sets environment variables for the duration (restoring the old values)."""
  old = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def _serve(port: int) -> None:
  """Runs the emulator (in memory, bucket `BUCKET`) with generation headers on downloads."""
  import logging
  logging.disable(logging.CRITICAL)
  from gcp_storage_emulator.handlers import objects

  original = objects.download

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # pylint: disable=broad-except -- the original answers 404.
      obj = None
    if obj is not None:
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    return original(request, response, storage, *args, **kwargs)

  objects.download = download  # Before `server` is imported: its routes bind this function.
  from gcp_storage_emulator import server as server_lib
  server = server_lib.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.run()


if __name__ == "__main__":
  _serve(int(sys.argv[1]))
