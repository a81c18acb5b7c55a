"""Installs gbt_t5x: `pip install -e .` (add `[test]` for the test tools), or builds its wheel.

Packages: `gbt_t5x` (library and entry points), `gbt_t5x_tasks` (the SeqIO task registrations,
kept in the top-level `tasks/` folder and installed under a name that cannot clash with other
projects' `tasks` modules) and the gin configuration files of the top-level `gin/` folder, shipped
inside the package as `gbt_t5x/gin/` so that `--gin_file=experiments/demo_nmt.gin` works from an
installed wheel (see docs/DESIGN.md, section 3, for the layout).
"""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements(name: str) -> list[str]:
  lines = (HERE / "requirements" / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


def _gin_packages() -> dict[str, str]:
  """`gbt_t5x.gin[.SUBDIR...]` -> `gin[/SUBDIR...]` for every folder holding gin files."""
  folders = sorted({p.parent.relative_to(HERE) for p in (HERE / "gin").rglob("*.gin")} |
                   {pathlib.Path("gin")})
  return {".".join(("gbt_t5x",) + f.parts): f.as_posix() for f in folders}


GIN_PACKAGES = _gin_packages()

setuptools.setup(
    name="gbt_t5x",
    version="0.2.0",
    description="Gradient-based hyper-parameter tuning for T5-style training in JAX.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="gbt_t5x developers",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.11,<3.12",
    packages=(setuptools.find_packages(include=["gbt_t5x", "gbt_t5x.*"]) + ["gbt_t5x_tasks"]
              + list(GIN_PACKAGES)),
    package_dir={"gbt_t5x_tasks": "tasks", **GIN_PACKAGES},
    # T5X's gin file names (gbt_t5x/t5x_compat/t5x/...), included by T5X users' gin files.
    package_data={**{name: ["*.gin"] for name in GIN_PACKAGES},
                  "gbt_t5x.t5x_compat.t5x.examples.t5.t5_1_1": ["*.gin"],
                  "gbt_t5x.t5x_compat.t5x.configs.runs": ["*.gin"]},
    install_requires=_requirements("base.txt"),
    extras_require={"test": _requirements("test.txt")},
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    keywords="t5 t5x jax flax seqio gin hyper-parameter tuning hypergradient",
)
