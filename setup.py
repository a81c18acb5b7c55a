"""Installs gbt_t5x: `pip install -e .` (add `[test]` for the test tools).

Packages: `gbt_t5x` (library and entry points) and `gbt_t5x_tasks` (the SeqIO task
registrations, kept in the top-level `tasks/` folder as docs/DESIGN.md (section 3, Architecture)
lays out, installed under a name that cannot clash with other projects' `tasks` modules).
"""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements(name: str) -> list[str]:
  lines = (HERE / "requirements" / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="gbt_t5x",
    version="0.1.0",
    description="Gradient-based hyper-parameter tuning for T5-style training in JAX.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["gbt_t5x", "gbt_t5x.*"]) + ["gbt_t5x_tasks"],
    package_dir={"gbt_t5x_tasks": "tasks"},
    install_requires=_requirements("base.txt"),
    extras_require={"test": _requirements("test.txt")},
)
