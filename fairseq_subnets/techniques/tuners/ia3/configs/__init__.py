"""IA3's shipped options (group tuner: ia3), which ia3_tiny.yaml and ia3_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
