"""The multilingual task's shipped settings (group multilingual: dense), which multilingual_*.yaml
and pathways_*.yaml in config/finetune place over their base config. Hydra finds them through
those entry configs' `hydra.searchpath` (pkg://), which needs a package."""
