"""The experiment harness: shared helpers of the evidence experiments (`scripts/experiments/*.py`),
not part of the installed `gbt_t5x` package.

Run records (`records`), experiment sizes (`sizes`), the arms' gin files, runs and resumption
(`common`), the BO baseline arm (`bo`, over `gbt_t5x.search`), the DoReMi proxy trainer (`doremi`)
and markdown reports with plots (`report`). Training a run in process (`gbt_t5x.runner`), scoring
it (`gbt_t5x.scoring`) and the search-space spec (`gbt_t5x.search_space`) belong to the package,
which the BO search CLI (`python -m gbt_t5x.search`) uses too.

Imported as `harness`: a script run as `python scripts/experiments/NAME.py` has its folder on
`sys.path` (so do the gin files it writes, e.g. `from harness import doremi`); tests put it there
in tests/conftest.py.
"""
