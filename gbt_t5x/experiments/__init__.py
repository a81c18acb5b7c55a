"""Shared helpers of the evidence experiments (`scripts/experiments/*.py`) and the Bayesian-
optimisation baseline (`gbt_t5x.search`): run a plain / guided / replayed demo training in process
(`runner`), score it (`scoring`), size it (`sizes`), parse search spaces (`search_space`) and write
markdown reports with plots (`report`).
"""
