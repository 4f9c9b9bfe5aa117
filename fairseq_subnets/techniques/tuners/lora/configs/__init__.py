"""LoRA's shipped options (group tuner: lora), which lora_tiny.yaml and lora_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
