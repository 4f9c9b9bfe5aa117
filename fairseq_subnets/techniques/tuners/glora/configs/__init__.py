"""GLoRA's shipped options (group tuner: glora), which glora_tiny.yaml and glora_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
