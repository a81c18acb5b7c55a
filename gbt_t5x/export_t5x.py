"""Write a checkpoint of this project in T5X's layout, so T5X finetunes or serves the model.

    python -m gbt_t5x.export_t5x --checkpoint_path=MODEL_DIR --output_dir=DIR [--dtype=float32]

Reads the params of the checkpoint `--checkpoint_path` names (a model dir: its latest step; its
checkpoints/ folder; or a step folder `.../checkpoints/524288`, local or `gs://`) and writes
`DIR/checkpoint_<step>/` in T5X's legacy layout (`gbt_t5x.train.t5x_checkpoints`): a msgpack
`checkpoint` file plus one zarr array per parameter, names as T5X's T5 v1.1 network uses them.
Only the params are written (no optimizer state); T5X restores them as a finetuning start with

    utils.RestoreCheckpointConfig.assignment_map = ((r'state.*', None),)
    utils.RestoreCheckpointConfig.fallback_to_scratch = True

Needs no gin file: the params' names, shapes and dtypes come from the checkpoint itself. Bad
input is one `error: ...` line (exit 2); an existing `checkpoint_<step>` is never overwritten.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gbt_t5x import console, errors


def export(checkpoint_path: str, output_dir: str, dtype: str = "float32") -> str:
  """Writes the params of our checkpoint `checkpoint_path` as a T5X checkpoint in `output_dir`.

  Returns:
    The written `checkpoint_<step>` folder.

  Raises:
    ValueError: no readable checkpoint at `checkpoint_path`, or the step folder exists already.
  """
  from gbt_t5x.train import checkpoints, t5x_checkpoints
  if t5x_checkpoints.locate(checkpoint_path) is not None:
    raise ValueError(f"{checkpoint_path} is a T5X checkpoint already")
  ckpt, step = checkpoints.find_checkpoint(checkpoint_path)
  params = ckpt.saved_params(step)
  return t5x_checkpoints.write(params, step, output_dir, dtype=dtype)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint_path", required=True,
                      help="model dir, its checkpoints/ folder or a step folder (local or gs://)")
  parser.add_argument("--output_dir", required=True,
                      help="folder that gets checkpoint_<step>/ (local or gs://)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="dtype of the written params (T5X's SaveCheckpointConfig.dtype)")
  parser.add_argument("--verbose", action="store_true", help="keep the libraries' log lines")

  def body() -> int:
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    written = export(args.checkpoint_path, args.output_dir, args.dtype)
    print(f"wrote T5X checkpoint {written}")
    return 0

  return errors.exit_code_of(body, user_errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
  console.configure(sys.argv)
  sys.exit(main())
