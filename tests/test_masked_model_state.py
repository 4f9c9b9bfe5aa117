"""State dicts of a masked `subnets_wav2vec_ctc` (only kept weights stored): the checkpoint's masks
win over the ones the model was built with, and a model built without masks takes them too."""
import pytest
import torch

SMALL = dict(layers=2, width=64, ffn=128, seconds=0.25)


@pytest.fixture(scope="module")
def bench():
    from fairseq_subnets.plugin import step_benchmark

    return step_benchmark


def masked_model(bench, sparsity, seed=0):
    from fairseq_subnets.core.pruning import random_masks

    settings = bench.StepBenchSettings(**SMALL)
    torch.manual_seed(seed)
    model = bench._build(settings)
    shapes = {name: weight.shape for name, weight in bench.select_weights(model.state_dict()).items()}
    masks = random_masks(shapes, sparsity, seed=seed)
    bench._apply_as_plugin(model, masks, sparsity)
    return model, masks


def effective_encoder_weights(bench, model, names):
    return {name: model.get_submodule(bench.W2V_PREFIX + name[: -len(".weight")]).weight.detach() for name in names}


@pytest.mark.parametrize("built_with", [0.3, None])
def test_a_checkpoint_brings_its_own_masks(bench, built_with):
    from fairseq_subnets.core.parametrize import masks_from_module

    saved, saved_masks = masked_model(bench, 0.8, seed=1)
    if built_with is None:
        torch.manual_seed(2)
        model = bench._build(bench.StepBenchSettings(**SMALL))
    else:
        model, _ = masked_model(bench, built_with, seed=2)
    model.load_state_dict(saved.state_dict())
    loaded = masks_from_module(model, prefix=bench.W2V_PREFIX)
    assert loaded.keys() == saved_masks.keys()
    assert all(torch.equal(loaded[name], mask) for name, mask in saved_masks.items())
    ours = effective_encoder_weights(bench, model, saved_masks)
    theirs = effective_encoder_weights(bench, saved, saved_masks)
    assert all(torch.equal(ours[name], theirs[name]) for name in saved_masks)
    assert all(torch.count_nonzero(ours[name][~mask]) == 0 for name, mask in saved_masks.items())


def test_masked_weights_are_stored_kept_only(bench):
    model, masks = masked_model(bench, 0.75)
    state = model.state_dict()
    for name, mask in masks.items():
        key = bench.W2V_PREFIX + name[: -len(".weight")] + ".parametrizations.weight.original"
        assert state[key].shape == (int(mask.sum()),), key
