"""AdaLoRA's shipped options (group tuner: adalora), which adalora_tiny.yaml and adalora_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
