"""What tests read back from saved fairseq checkpoints."""


def stored_masks_and_baked_weights(checkpoint):
    """The masks a checkpoint stores and its effective (baked) weights, by state-dict key."""
    from fairseq_subnets.core.parametrize import bake_state_dict, masks_from_state_dict
    from fairseq_subnets.plugin.checkpoints import load_checkpoint
    from fairseq_subnets.plugin.models import W2V_PREFIX

    state = load_checkpoint(checkpoint)["model"]
    return masks_from_state_dict(state, prefix=W2V_PREFIX), bake_state_dict(state)


def assert_pruned_weights_zero(checkpoint, expected_masks):
    """The checkpoint holds exactly `expected_masks` and every pruned effective weight is 0."""
    import torch

    from fairseq_subnets.plugin.models import W2V_PREFIX

    masks, baked = stored_masks_and_baked_weights(checkpoint)
    assert masks.keys() == expected_masks.keys(), checkpoint
    for name, mask in expected_masks.items():
        assert torch.equal(masks[name], mask), (checkpoint, name)
        assert torch.count_nonzero(baked[W2V_PREFIX + name][~mask]) == 0, (checkpoint, name)
