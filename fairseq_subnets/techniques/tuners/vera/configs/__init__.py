"""VeRA's shipped options (group tuner: vera), which vera_tiny.yaml and vera_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
