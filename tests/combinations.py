"""The combinations of techniques that the weight-transform stack makes well defined (adaptations
apply before masks), as runs of a shipped tiny config plus overrides: one definition for the
end-to-end checks (test_combined_techniques) and the kill-and-resume modes
(test_reproducible_training).

The three combinations take two runs: LoRA under learned masks that learn inside a fixed mask is
both "a tuner with learned masks" and "learned masks inside a fixed mask" (each one's checks read
it), and pruning with group lasso over LoRA, which no mask technique joins, is the other."""

LORA = ("+model.tuner=lora", "+model.tuner_targets='q,v,fc1'", "+model.tuner_r=4", "+model.tuner_alpha=4.0")
"""LoRA on q, v and fc1: fc1 is also learned-masked and pruned, so a delta sits under each mask."""
PRUNING_TARGET = 0.8
"""Reached by pruning events at updates 4, 8 and 12, half of the remaining weights each."""
UPDATES = 15
"""Updates of a run that checks the trained result: three after the last pruning event, whose
rewind takes the tuner back to its start (LoRA's B to zero)."""
COMBINATIONS = ("tuner_with_learned_masks_in_fixed_mask", "pruning_with_tuner")
"""The runs (the docstring says which combinations each holds)."""


def combination_arguments(name, fixed_mask):
    """(config name in config/finetune, overrides) of one combination, without the paths of the
    data, the pretrained model and the save dir; `fixed_mask`: a mask file of the pretrained model."""
    if name == "tuner_with_learned_masks_in_fixed_mask":
        return "learned_masks_tiny", ["model.score_targets=all", *LORA, f"+model.mask_path={fixed_mask}"]
    if name == "pruning_with_tuner":  # lottery-ticket rewinding of the tuner, with group lasso
        return "lth_tiny", [*LORA, "model.pruning_interval=4", "model.pruning_fraction=0.5",
                            f"model.pruning_target_sparsity={PRUNING_TARGET}", "model.group_lasso_strength=0.01",
                            "lr_scheduler.warmup_steps=1", "lr_scheduler.hold_steps=2", "lr_scheduler.decay_steps=1"]
    raise ValueError(name)
