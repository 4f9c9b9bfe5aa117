"""The tuners' shared training schedule (group tuner_schedule: tiny, xlsr_300m), which the
<method>_tiny.yaml and <method>_xlsr_300m.yaml entry configs in config/finetune place over their base
config. Hydra finds it through the entry configs' `hydra.searchpath` (pkg://), which needs a package."""
