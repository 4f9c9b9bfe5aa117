"""alpha-LoRA's shipped options (group tuner: alpha_lora), which alpha_lora_tiny.yaml and alpha_lora_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
