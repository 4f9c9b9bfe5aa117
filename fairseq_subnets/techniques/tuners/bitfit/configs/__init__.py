"""BitFit's shipped options (group tuner: bitfit), which bitfit_tiny.yaml and bitfit_xlsr_300m.yaml in
config/finetune select. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://),
which needs a package."""
