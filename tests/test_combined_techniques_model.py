"""Combined techniques on a tiny `subnets_wav2vec_ctc` model in-process: the invariants that make
each lifted combination well defined, proved on the model the host builds from a config.

- learned masks inside a fixed-mask subnetwork: the fixed mask's pruned weights stay exactly 0
  whatever the scores do, and `score_sparsity` counts over the weights the fixed mask keeps;
- a tuner with learned masks: both train, and the tuner's delta is masked by the learned mask;
- pruning during training and group lasso on a model that carries a tuner: the schedule prunes
  the adapted weight, rewinding restores the tuner, and group lasso reaches the tuner's factors.

In every case the baked state dict (what `export` writes) equals the model's effective weights.
The same combinations through stock fairseq commands: tests/test_combined_techniques.py."""
import types

import pytest
import torch

from factory import TINY, host_model as build, random_encoder_masks
from fairseq_subnets.core.maskfile import save_mask_file
from fairseq_subnets.core.parametrize import bake_state_dict, masks_from_module
from fairseq_subnets.core.pruning import pruned_count
from fairseq_subnets.core.transforms import FixedMask, stacks
from fairseq_subnets.plugin.components.models import W2V_PREFIX
from fairseq_subnets.techniques.learned_masks.layer import GlobalTopK, ScoreMask, score_masks

LORA = dict(tuner="lora", tuner_targets="q,v,fc1", tuner_r=4, tuner_alpha=4.0)
SCHEDULE = dict(pruning_interval=2, pruning_fraction=0.5, pruning_target_sparsity=0.7)


def effective_weights(model):
    """Model-relative name -> the effective weight of every transformed encoder weight."""
    return {name: module.weight.detach().clone() for name, module, _ in stacks(model, W2V_PREFIX)}


def assert_baked_equals_effective(model):
    baked = bake_state_dict(model.state_dict())
    for name, weight in effective_weights(model).items():
        assert torch.equal(baked[W2V_PREFIX + name], weight), name


def train_steps(model, steps, lr=0.05):
    """`steps` Adam steps on a random loss, with the scores moved far first (as training moves them)."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        optimizer.zero_grad()
        model(source=torch.randn(1, 4000), padding_mask=None)["encoder_out"].pow(2).mean().backward()
        optimizer.step()


@pytest.fixture
def fixed_mask_file(tmp_path):
    masks = random_encoder_masks(0.5, seed=1, **TINY)
    path = tmp_path / "fixed.mask"
    save_mask_file(str(path), masks, {"method": "random"})
    return str(path), masks


# ---- the score mask within a mask, alone ------------------------------------------------------


def test_a_score_mask_within_a_mask_never_keeps_a_weight_outside_it_and_counts_its_sparsity_inside():
    within = torch.tensor([True, True, False, True, False, True, True, True])
    scores = torch.tensor([0.1, 0.2, 9.0, 0.3, 8.0, 0.4, 0.5, 0.6])  # the largest scores lie outside
    mask = ScoreMask(scores, 0.5, within=within)
    assert int(mask.n_pruned) == 2 + pruned_count(0.5, 6)
    assert mask.kept().tolist() == [False, False, False, False, False, True, True, True]
    assert torch.equal(mask(torch.ones(8)), mask.kept().float())
    rebuilt = ScoreMask.from_state(dict(mask.state_dict()), (8,))
    assert torch.equal(rebuilt.kept(), mask.kept()) and rebuilt.options()["within"]
    placeholder = ScoreMask.placeholder((8,), mask.options())
    placeholder.load_state_dict(mask.state_dict())
    assert torch.equal(placeholder.kept(), mask.kept())


def test_a_score_mask_without_a_mask_under_it_has_the_state_and_plan_of_earlier_releases():
    mask = ScoreMask(torch.rand(8), 0.25)
    assert set(mask.state_dict()) == {"scores", "n_pruned"} and mask.options() == {"sparsity": 0.25, "scope": "matrix"}
    assert "within" not in ScoreMask.from_state(dict(mask.state_dict()), (8,)).state_dict()


def test_a_global_top_k_within_masks_keeps_every_weight_outside_them_pruned():
    members = {"a": ScoreMask(torch.tensor([5.0, 0.9, 0.5, 0.2]), 0.5, "global",
                              within=torch.tensor([False, True, True, True])),
               "b": ScoreMask(torch.tensor([0.3, 7.0, 0.8, 0.7]), 0.5, "global",
                              within=torch.tensor([True, False, True, True]))}
    GlobalTopK(members).decide(total=2 + pruned_count(0.5, 6))
    assert members["a"].kept().tolist() == [False, True, False, False]
    assert members["b"].kept().tolist() == [False, False, True, True]
    assert sum(int(m.n_pruned) for m in members.values()) == 5


# ---- learned masks inside a fixed-mask subnetwork ----------------------------------------------


@pytest.mark.parametrize("storage, scope", [("kept", "matrix"), ("kept", "global"), ("dense", "matrix")])
def test_learned_masks_inside_a_fixed_mask_keep_its_pruned_weights_zero_and_count_sparsity_over_its_kept_weights(
        fixed_mask_file, storage, scope):
    path, fixed = fixed_mask_file
    model = build(mask_path=path, mask_storage=storage, score_sparsity=0.2, score_targets="all", score_scope=scope)
    members = score_masks(model, W2V_PREFIX)
    assert set(members) == set(fixed)
    with torch.no_grad():  # the largest scores where the fixed mask prunes: they must still lose
        for name, member in members.items():
            member.scores[~fixed[name]] = 100.0
    train_steps(model, 3)
    model.eval()
    learned = {name: member.kept() for name, member in members.items()}
    weights = effective_weights(model)
    for name, kept in fixed.items():
        assert torch.count_nonzero(weights[name][~kept]) == 0, name
        assert not (learned[name] & ~kept).any(), name
    inside = sum(int(kept.sum()) for kept in fixed.values())
    removed = inside - sum(int(kept.sum()) for kept in learned.values())
    if scope == "matrix":
        assert all(int(fixed[name].sum()) - int(learned[name].sum()) == pruned_count(0.2, int(fixed[name].sum()))
                   for name in fixed)
    assert removed == (pruned_count(0.2, inside) if scope == "global" else
                       sum(pruned_count(0.2, int(kept.sum())) for kept in fixed.values()))
    effective = masks_from_module(model, W2V_PREFIX)
    assert all(torch.equal(effective[name], learned[name]) for name in fixed)
    assert_baked_equals_effective(model)


def test_a_fixed_mask_with_learned_masks_rebuilds_from_its_plan_without_the_mask_file(fixed_mask_file):
    path, fixed = fixed_mask_file
    settings = dict(score_sparsity=0.3, score_targets="ffn")
    trained = build(mask_path=path, **settings)
    train_steps(trained, 2)
    rebuilt = build(seed=5, transform_plan=trained.cfg.transform_plan, **settings)  # no mask_path: a decode
    rebuilt.load_state_dict(trained.state_dict())
    trained.eval(), rebuilt.eval()
    ours, theirs = effective_weights(rebuilt), effective_weights(trained)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert rebuilt.mask_digest() == trained.mask_digest()
    assert all(isinstance(stack.get(FixedMask.kind, "default"), FixedMask) for _, _, stack in stacks(rebuilt))


# ---- a tuner with learned masks ----------------------------------------------------------------


def test_a_tuner_with_learned_masks_trains_both_and_its_delta_is_masked():
    model = build(score_sparsity=0.3, score_targets="all", **LORA)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {name.rsplit(".", 1)[1] for name in trainable} == {"scores", "lora_A", "lora_B", "weight", "bias"}
    assert {name for name in trainable if name.endswith((".weight", ".bias"))} == {
        "w2v_encoder.proj.weight", "w2v_encoder.proj.bias"}
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    train_steps(model, 2)
    changed = {name.rsplit(".", 1)[1] for name, p in model.named_parameters() if name in before
               and not torch.equal(p.detach(), before[name])}
    assert {"scores", "lora_A", "lora_B"} <= changed
    model.eval()
    module = model.get_submodule(f"{W2V_PREFIX}encoder.layers.0.fc1")
    stack = module.parametrizations.weight[0]
    lora = next(t for _, _, t in stack.transforms() if t.kind == "lora")
    learned = score_masks(model, W2V_PREFIX)["encoder.layers.0.fc1.weight"].kept()
    base = module.parametrizations.weight.original.detach()
    assert torch.count_nonzero(lora(base) - base) > 0
    assert torch.equal(module.weight.detach(), lora(base) * learned.to(base.dtype))
    assert torch.count_nonzero(module.weight.detach()[~learned]) == 0
    assert_baked_equals_effective(model)


# ---- pruning during training and group lasso with a tuner ---------------------------------------


def pruning_technique(model):
    from fairseq_subnets.techniques.extension import technique_of
    from fairseq_subnets.techniques.iterative_pruning import IterativePruning

    return technique_of(model, IterativePruning)


def test_pruning_with_a_tuner_prunes_the_adapted_weight_and_rewinds_the_tuner():
    model = build(pruning_rewind_update=0, group_lasso_strength=0.1, **SCHEDULE, **LORA)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(model.iterative_pruning.rewind_point.values()) == trained  # the tuner and the output layer
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    stand_in = types.SimpleNamespace(optimizer=optimizer)
    model.train()
    for update in (1, 2):
        optimizer.zero_grad()
        loss = model(source=torch.randn(1, 4000), padding_mask=None)["encoder_out"].pow(2).mean()
        (loss + model.regularisation_term("group_lasso")).backward()
        lora_grads = [p.grad for name, p in model.named_parameters() if name.endswith("lora_B")]
        assert all(grad is not None and grad.abs().sum() > 0 for grad in lora_grads)
        optimizer.step()
        adapted = effective_weights(model)
        model.after_optimizer_step(update, stand_in)
    masks = pruning_technique(model).kept_masks(model)
    assert all(abs(1 - float(mask.float().mean()) - 0.5) < 0.01 for mask in masks.values())
    fc1 = "encoder.layers.0.fc1.weight"  # adapted: the event ranked W + delta, not W
    magnitude = adapted[fc1].abs()
    assert magnitude[masks[fc1]].min() >= magnitude[~masks[fc1]].max()
    after = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(after[name], start[name]) for name in trained)  # rewound, tuner included
    with torch.no_grad():  # a trained tuner under the pruning mask: pruned effective weights stay 0
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.add_(1.0)
    weights = effective_weights(model)
    assert all(torch.count_nonzero(weights[name][~mask]) == 0 for name, mask in masks.items())
    assert_baked_equals_effective(model)
