"""Iterative pruning's shipped settings (groups iterative_pruning and rewinding: tiny, xlsr_300m),
which imp_*.yaml and lth_*.yaml in config/finetune place over their base config. Hydra finds them
through those entry configs' `hydra.searchpath` (pkg://), which needs a package."""
