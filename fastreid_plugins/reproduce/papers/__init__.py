"""The four papers' ablation tables as data (one module per method; no heavy imports)."""
