"""The package on its own: the sdist carries what setup.py reads, and the wheel — built from this
checkout and installed with `pip install --target` (no source tree on the path) — trains two
guided steps of the demo config from an empty directory, finding the gin files it ships, and
exports the learned schedule."""
from __future__ import annotations

import subprocess
import sys
import tarfile

import pytest

from tests.train.test_preemption import GUIDED_FLAGS, REPO, demo_env, make_world


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
  proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
  assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-4000:])
  return proc


@pytest.mark.slow
def test_sdist_carries_requirements_gin_files_and_license(tmp_path):
  _run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=REPO)
  (sdist,) = tmp_path.glob("gbt_t5x-*.tar.gz")
  with tarfile.open(sdist) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
  assert {"requirements/base.txt", "requirements/test.txt", "LICENSE", "setup.py"} <= names
  shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "gin").rglob("*.gin")}
  assert shipped and shipped <= names


@pytest.mark.slow
def test_wheel_trains_and_exports_from_an_empty_directory(tmp_path, tmp_path_factory):
  world = make_world(tmp_path_factory)
  wheels = tmp_path / "wheels"
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(wheels), str(REPO)])
  (wheel,) = wheels.glob("gbt_t5x-*.whl")
  site = tmp_path / "site"
  _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
        str(wheel)])
  work = tmp_path / "empty"
  work.mkdir()
  env = dict(demo_env(world), PYTHONPATH=str(site))

  # The installed copy is the one imported (not this checkout), gin files included.
  probe = _run([sys.executable, "-c", "import gbt_t5x, gbt_t5x_tasks\n"
                "from gbt_t5x import gin_utils\n"
                "print(gbt_t5x.__file__, gbt_t5x_tasks.__file__, gin_utils.PACKAGE_GIN_DIR)"],
               cwd=work, env=env)
  assert all(path.startswith(str(site)) for path in probe.stdout.split()), probe.stdout
  # T5X's gin file names (gbt_t5x.t5x_compat) ship too.
  compat = _run([sys.executable, "-c", "from gbt_t5x import t5x_compat as c\n"
                 "print(all((c.ROOT / 't5x' / p).is_file() for p in ('configs/runs/pretrain.gin', "
                 "'examples/t5/t5_1_1/small.gin')))"], cwd=work, env=env)
  assert compat.stdout.strip() == "True", compat.stdout

  _run([sys.executable, "-m", "gbt_t5x.train", *GUIDED_FLAGS, "--gin.TRAIN_STEPS=2",
        "--gin.HYPER_STEP_EVERY=1", "--gin.MODEL_DIR='run'"], cwd=work, env=env)
  rows = (work / "run" / "guided_trajectory.jsonl").read_text().splitlines()
  assert len(rows) == 2 and all('"guide_loss_per_token"' in r for r in rows)
  assert (work / "run" / "checkpoints" / "2").is_dir()
  _run([sys.executable, "-m", "gbt_t5x.guided.export", "run"], cwd=work, env=env)
  assert "learning_rate" in (work / "run" / "learned_schedule.gin").read_text()
