"""`python -m gbt_t5x.train --gin_file=... --gin.MODEL_DIR=...`: T5X's train entry point.

Gin files bind `train_script.train.*` after `import __main__ as train_script`, exactly as in T5X.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  console.configure(sys.argv)  # Before TensorFlow and JAX load (they log when imported).

from gbt_t5x import gin_utils
from gbt_t5x.train.train_lib import train  # noqa: F401  (`__main__.train`, which gin binds)

_train_using_gin = gin_utils.train_configurable()


def main(args) -> int:
  del args
  _train_using_gin(summarize_config_fn=gin_utils.write_config_gin)
  return 0


if __name__ == "__main__":
  gin_utils.quiet_tensorflow()
  sys.exit(gin_utils.run(main, "Train a T5 model, optionally with guided hyper-parameters.",
                         entry='train'))
