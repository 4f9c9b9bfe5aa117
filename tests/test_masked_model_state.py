"""State dicts of a masked `subnets_wav2vec_ctc` (only kept weights stored): the checkpoint's masks
win over the ones the model was built with, and a model built without masks takes them too."""
import pytest
import torch

from factory import ctc_model, masked_ctc_model
from fairseq_subnets.core.parametrize import masks_from_module
from fairseq_subnets.plugin.components.models import W2V_PREFIX


def effective_encoder_weights(model, names):
    return {name: model.get_submodule(W2V_PREFIX + name[: -len(".weight")]).weight.detach() for name in names}


@pytest.mark.parametrize("built_with", [0.3, None])
def test_a_checkpoint_brings_its_own_masks(built_with):
    saved, saved_masks = masked_ctc_model(0.8, seed=1)
    model = ctc_model(seed=2) if built_with is None else masked_ctc_model(built_with, seed=2)[0]
    model.load_state_dict(saved.state_dict())
    loaded = masks_from_module(model, prefix=W2V_PREFIX)
    assert loaded.keys() == saved_masks.keys()
    assert all(torch.equal(loaded[name], mask) for name, mask in saved_masks.items())
    ours = effective_encoder_weights(model, saved_masks)
    theirs = effective_encoder_weights(saved, saved_masks)
    assert all(torch.equal(ours[name], theirs[name]) for name in saved_masks)
    assert all(torch.count_nonzero(ours[name][~mask]) == 0 for name, mask in saved_masks.items())


def test_masked_weights_are_stored_kept_only():
    model, masks = masked_ctc_model(0.75)
    state = model.state_dict()
    for name, mask in masks.items():
        key = W2V_PREFIX + name[: -len(".weight")] + ".parametrizations.weight.original"
        assert state[key].shape == (int(mask.sum()),), key


def test_a_mask_file_for_a_deeper_model_fits_only_with_the_layers_it_shares(tmp_path):
    """A 3-layer mask file on the 2-layer model: refused whole (no mask is dropped unnoticed),
    applied once model.mask_layers selects the layers the model has."""
    from factory import TINY, random_encoder_masks
    from fairseq_subnets.core.maskfile import MaskFileError, save_mask_file
    from fairseq_subnets.techniques.fixed_masks import apply_mask_file

    path = tmp_path / "deep.mask"
    masks = random_encoder_masks(0.5, **{**TINY, "layers": 3})
    save_mask_file(str(path), masks)
    model = ctc_model()
    with pytest.raises(MaskFileError, match=r"deep.mask: mask for encoder.layers.2.self_attn.q_proj.weight, which "
                       "the model does not have"):
        apply_mask_file(model, str(path))
    apply_mask_file(model, str(path), layers="0-1")
    applied = masks_from_module(model, prefix=W2V_PREFIX)
    assert sorted(applied) == sorted(name for name in masks if not name.startswith("encoder.layers.2."))
    assert all(torch.equal(applied[name], masks[name]) for name in applied)
