"""S2-LoRA's shipped options (group tuner: s2lora), which s2lora_tiny.yaml and s2lora_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
