"""DoRA's shipped options (group tuner: dora), which dora_tiny.yaml and dora_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
