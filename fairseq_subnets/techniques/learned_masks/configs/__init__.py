"""Learned masks' shipped settings (group learned_masks: tiny, xlsr_300m), which
learned_masks_tiny.yaml and learned_masks_xlsr_300m.yaml in config/finetune place over their base
config. Hydra finds them through those entry configs' `hydra.searchpath` (pkg://), which needs a package."""
