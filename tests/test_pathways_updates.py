"""Pathway updates (techniques/pathways/updates.py, core.holding): with Adam and weight decay, a
step on one language's batch changes only the shared weights inside that language's mask, bit for
bit, step after step; without the hold, the same training moves the weights outside the mask."""
import pytest
import torch
from torch import nn

from fairseq_subnets.core.holding import unchanged_through
from fairseq_subnets.core.parametrize import apply_masks
from fairseq_subnets.core.pruning import random_masks
from fairseq_subnets.core.transforms import select_language
from fairseq_subnets.techniques.pathways.layer import apply_language_masks
from fairseq_subnets.techniques.pathways.updates import outside_active_language_masks

LANGUAGES = ("es", "ca", "ast")


def pathway_model(kept_only_mask_below):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16))
    shapes = {"0.weight": (32, 16), "2.weight": (16, 32)}
    if kept_only_mask_below:  # a fixed mask in kept-only storage under the language masks
        apply_masks(model, random_masks(shapes, 0.25, seed=99), storage="kept")
    masks = {language: random_masks(shapes, 0.5, seed=seed) for seed, language in enumerate(LANGUAGES)}
    apply_language_masks(model, masks)
    return model, masks


def stored_weights(model):
    return {name: module.parametrizations.weight.original.detach().clone()
            for name, module in (("0.weight", model[0]), ("2.weight", model[2]))}


def train(model, steps, hold):
    """Adam with weight decay (decoupled), one language per step; yields (language, before, after)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        language = LANGUAGES[step % 2] if step < steps // 2 else LANGUAGES[2]  # ast's moments go stale, then move
        select_language(model, language)
        optimizer.zero_grad()
        model(torch.randn(8, 16, generator=generator)).pow(2).mean().backward()
        before = stored_weights(model)
        if hold:
            with unchanged_through(outside_active_language_masks(model)):
                optimizer.step()
        else:
            optimizer.step()
        yield language, before, stored_weights(model)


def expanded(model, name, stored):
    """The stored values as a full matrix (kept-only storage expanded; the rest is never stored)."""
    module = model[int(name[0])]
    fixed = module.parametrizations.weight[0].kept_only_mask()
    if fixed is None:
        return stored, torch.ones(stored.shape, dtype=torch.bool)
    return fixed.expand(stored), fixed.mask


@pytest.mark.parametrize("kept_only_mask_below", [False, True])
def test_a_step_changes_only_the_weights_inside_the_batch_languages_mask(kept_only_mask_below):
    model, masks = pathway_model(kept_only_mask_below)
    for language, before, after in train(model, 40, hold=True):
        for name in before:
            full_before, stored = expanded(model, name, before[name])
            full_after, _ = expanded(model, name, after[name])
            outside = ~masks[language][name] & stored
            assert torch.equal(full_after[outside], full_before[outside]), (language, name)
            inside = masks[language][name] & stored
            assert (full_after[inside] != full_before[inside]).float().mean() > 0.9, (language, name)


def test_without_the_hold_adam_and_weight_decay_move_the_weights_outside_the_mask():
    model, masks = pathway_model(False)
    moved = 0
    for language, before, after in train(model, 10, hold=False):
        moved += sum(int((after[name] != before[name])[~masks[language][name]].sum()) for name in before)
    assert moved > 1000


def test_without_a_selected_language_the_hold_names_the_languages():
    model, _ = pathway_model(False)
    with pytest.raises(ValueError, match="no language selected"):
        outside_active_language_masks(model)
