"""Tuners on a real (tiny) fairseq wav2vec2 CTC model: every method changes the logits through the
weights that fairseq's fused attention reads, bakes to exactly what it computes unbaked, trains
exactly its closed-form count of parameters and leaves the backbone bit-identical; S2-LoRA shares
one tensor per group and shape, and its regulariser is the paper's formula; AdaLoRA's budget
follows its schedule; VeRA's random bases are one tensor drawn at the largest target shape; a DoRA
merge refuses to be undone; bad configs fail before anything is built."""
import copy

import pytest
import torch

from fairseq_subnets.core.parametrize import bake_module, bake_state_dict
from fairseq_subnets.core.transforms import (
    TransformError, build_from_plan, regularisation_terms, stack_of, stacks, transform_plan,
)
from fairseq_subnets.techniques.tuners import (
    TUNERS,
    TunerError,
    freeze_all_but_tuners,
    inject_tuner,
    target_shapes,
    tuner_config,
    tuner_parameters,
    tuner_ranks,
    tuner_trained_count,
    tuner_transforms,
    unmerge_state_dict,
)
from fairseq_subnets.techniques.tuners.adalora import ORTHOGONALITY_TERM, budget_at, svd_deltas
from fairseq_subnets.techniques.tuners.dora import DoraChange
from fairseq_subnets.techniques.tuners.s2lora import FACTORS_TERM, SPARSITY_TERM, rank_distribution
from fairseq_subnets.techniques.tuners.vera import random_bases
from fairseq_subnets.plugin.components.models import W2V_PREFIX
from factory import ctc_model

EVERY_MATRIX = {"targets": "all"}
REQUIRED = {"adalora": {"total_updates": 1000}}
"""Options a method has no default for."""


def config_of(method, **options):
    """tuner_config with the method's required options filled in."""
    return tuner_config(method, **{**REQUIRED.get(method, {}), **options})


def audio(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4000, generator=generator)


def logits(model, source):
    model.eval()
    with torch.no_grad():
        out = model(source=source, padding_mask=None)
    return out["encoder_out"]


def tuned_model(method, seed=0, **options):
    """A tiny CTC model with the tuner on, its parameters moved off their (no-op) start."""
    model = ctc_model(seed)
    config = config_of(method, **options)
    inject_tuner(model, config, W2V_PREFIX)
    generator = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for parameter in tuner_parameters(model).values():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model, config


@pytest.mark.parametrize("method", list(TUNERS))
def test_every_tuner_changes_the_logits_and_bakes_to_exactly_them(method):
    backbone = ctc_model(0)
    model, _ = tuned_model(method, **EVERY_MATRIX)
    source = audio()
    unmerged = logits(model, source)
    assert not torch.allclose(unmerged, logits(backbone, source), atol=1e-4)
    merged = copy.deepcopy(model)
    bake_module(merged)
    assert not any(stack_of(m) for m in merged.modules())
    # To float32 rounding: the products of a plain weight may round otherwise (a few ulps of the
    # logits, which are about 4 in size).
    torch.testing.assert_close(logits(merged, source), unmerged, rtol=1e-6, atol=1e-6)
    stock = ctc_model(0)
    stock.load_state_dict(bake_state_dict(model.state_dict()))
    torch.testing.assert_close(logits(stock, source), unmerged, rtol=1e-6, atol=1e-6)


UNMERGEABLE = ("dora",)
"""Tuners whose merge cannot be undone from the merged weight and their state."""


@pytest.mark.parametrize("method", [method for method in TUNERS if method not in UNMERGEABLE])
def test_unmerging_a_merged_state_gives_back_the_backbone(method):
    backbone = ctc_model(0).state_dict()
    model, _ = tuned_model(method, **EVERY_MATRIX)
    merged = bake_state_dict(model.state_dict())
    restored = unmerge_state_dict(merged, model.state_dict())
    assert restored.keys() == backbone.keys()
    changed = [k for k in backbone if not torch.equal(merged[k], backbone[k])]
    assert changed  # the merge changed weights (or biases), and unmerging takes them back
    for key in backbone:
        torch.testing.assert_close(restored[key], backbone[key], rtol=1e-5, atol=1e-6)


def test_unmerging_refuses_a_scale_of_zero():
    model, _ = tuned_model("ia3", targets="k", layers="0")
    (_, scale), = tuner_transforms(model)
    with torch.no_grad():
        scale.ia3_l[3] = 0.0
    with pytest.raises(ValueError, match="ia3_out: a scale of 0 cannot be undone"):
        unmerge_state_dict(bake_state_dict(model.state_dict()), model.state_dict())


def test_unmerging_dora_is_refused_naming_it():
    model, _ = tuned_model("dora")
    with pytest.raises(TransformError, match=r"^dora: a merged weight cannot be taken back to the backbone: the "
                                             r"merge divided each row by \|\|W \+ s B A\|\|"):
        unmerge_state_dict(bake_state_dict(model.state_dict()), model.state_dict())


def test_dora_keeps_each_rows_length_at_its_magnitude_and_a_zero_row_at_zero():
    """m * V / ||V|| has row norms m whatever V is; a row that is 0 throughout (pruned entirely
    under a fixed mask) has no direction and stays 0, with finite gradients."""
    torch.manual_seed(0)
    weight = torch.randn(6, 10)
    weight[2] = 0
    change = DoraChange.create(weight, 3, 6.0)
    torch.testing.assert_close(change.magnitude[2], torch.tensor(0.0))
    torch.testing.assert_close(change(weight), weight)  # B = 0: the backbone exactly
    with torch.no_grad():
        change.lora_B.normal_()
        change.magnitude.mul_(torch.linspace(0.5, 2, 6))
    adapted = change(weight)
    torch.testing.assert_close(adapted.norm(dim=1), change.magnitude.detach())
    change(torch.zeros(6, 10)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in change.parameters())


def test_dora_on_a_fixed_mask_starts_from_the_subnetwork_and_keeps_its_pruned_weights_zero():
    """Fixed masks come first (`+model.mask_path` is applied before the tuner), so the magnitudes
    are the rows' norms of the kept weights and the model starts as the subnetwork; trained, every
    pruned weight stays exactly 0 and the merge is what the model computes."""
    from factory import masked_ctc_model

    model, masks = masked_ctc_model(0.5)
    source = audio()
    subnetwork = logits(model, source)
    inject_tuner(model, tuner_config("dora", **EVERY_MATRIX), W2V_PREFIX)
    torch.testing.assert_close(logits(model, source), subnetwork, rtol=1e-6, atol=1e-6)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in tuner_parameters(model).values():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    tuned = logits(model, source)
    assert not torch.allclose(tuned, subnetwork, atol=1e-4)
    effective = {name[len(W2V_PREFIX):]: module.weight.detach() for name, module, _ in stacks(model)}
    assert effective.keys() == masks.keys()
    assert all(not effective[name][~mask].any() for name, mask in masks.items())
    stock = ctc_model(0)
    stock.load_state_dict(bake_state_dict(model.state_dict()))
    torch.testing.assert_close(logits(stock, source), tuned, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", list(TUNERS))
def test_a_model_rebuilt_from_its_plan_loads_the_state_and_computes_the_same(method):
    model, _ = tuned_model(method)
    rebuilt = ctc_model(5)
    build_from_plan(rebuilt, transform_plan(model))
    rebuilt.load_state_dict(model.state_dict())
    source = audio()
    assert torch.equal(logits(rebuilt, source), logits(model, source))
    assert set(tuner_parameters(rebuilt)) == set(tuner_parameters(model))


@pytest.mark.parametrize("method", list(TUNERS))
def test_each_tuner_trains_its_closed_form_count(method):
    model = ctc_model(0)
    config = config_of(method, **EVERY_MATRIX)
    shapes = target_shapes(model, config, W2V_PREFIX)
    inject_tuner(model, config, W2V_PREFIX)
    assert sum(p.numel() for p in tuner_parameters(model).values()) == config.trainable_count(shapes)


def test_the_closed_form_counts_at_the_paper_defaults():
    """One encoder layer of width 64, FFN 128: the numbers written out by hand."""
    attention, fc1, fc2 = (64, 64), (128, 64), (64, 128)
    one_layer = {f"encoder.layers.0.self_attn.{p}_proj.weight": attention for p in ("q", "k", "v", "out")}
    one_layer.update({"encoder.layers.0.fc1.weight": fc1, "encoder.layers.0.fc2.weight": fc2})
    qv = {n: s for n, s in one_layer.items() if ".q_proj" in n or ".v_proj" in n}
    assert tuner_config("lora").trainable_count(qv) == 2 * 8 * 128
    assert tuner_config("alpha_lora").trainable_count(qv) == 2 * (8 * 128 + 1)
    assert config_of("adalora").trainable_count(qv) == 2 * 12 * (128 + 1)
    kv_fc2 = {n: s for n, s in one_layer.items() if any(f".{p}." in n for p in ("k_proj", "v_proj", "fc2"))}
    assert tuner_config("ia3").trainable_count(kv_fc2) == 64 + 64 + 128  # k out, v out, fc2 in
    assert tuner_config("bitfit").trainable_count(one_layer) == 4 * 64 + 128 + 64  # the biases
    # S2-LoRA: one attention pair 8 x (64 + 64), fc1 and fc2 pairs 8 x (128 + 64) each, 8 per matrix
    assert tuner_config("s2lora").trainable_count(one_layer) == 8 * 128 + 2 * 8 * 192 + 6 * 8
    assert tuner_config("glora", targets="q").trainable_count(
        {"encoder.layers.0.self_attn.q_proj.weight": attention}) == 2 * 8 * 128 + 8 * 65 + 2
    assert tuner_config("dora").trainable_count(qv) == 2 * (8 * 128 + 64)  # LoRA's and a magnitude per row
    assert tuner_config("vera").trainable_count(qv) == 2 * (64 + 256)  # b per row, d per rank


@pytest.mark.parametrize("method", list(TUNERS))
def test_training_moves_only_the_tuner_and_the_head_leaving_the_backbone_bit_identical(method):
    model, _ = tuned_model(method, **EVERY_MATRIX)
    trainable = freeze_all_but_tuners(model, keep=lambda name: name.startswith("w2v_encoder.proj."))
    tuned = tuner_parameters(model)
    assert set(trainable) == set(tuned) | {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(3):
        out = model(source=audio(step), padding_mask=None)["encoder_out"]
        loss = out.logsumexp(-1).mean() + sum(regularisation_terms(model).values(), torch.zeros(()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    tuner_keys = {k for k in before if any(f".{kind}." in k for kind in _tuner_kinds(model))}
    assert moved, "nothing trained"
    assert moved <= tuner_keys | {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias"}
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith(".original"))


def _tuner_kinds(model):
    return {t.kind for _, t in tuner_transforms(model)}


def test_s2lora_shares_one_tensor_per_group_and_shape_also_after_a_rebuild():
    model, config = tuned_model("s2lora")
    rebuilt = ctc_model(3)
    build_from_plan(rebuilt, transform_plan(model))
    rebuilt.load_state_dict(model.state_dict())
    for candidate in (model, rebuilt):
        members = [t for _, t in tuner_transforms(candidate)]
        factors = {(t.group, t.weight_shape()): (t.shared_A, t.shared_B) for t in members}
        assert len(factors) == 3  # attention (64 x 64), fc1 (128 x 64), fc2 (64 x 128)
        for t in members:
            shared_A, shared_B = factors[(t.group, t.weight_shape())]
            assert t.shared_A is shared_A and t.shared_B is shared_B
        assert sum(t.owner for t in members) == 3
        state = candidate.state_dict()
        pointers = {state[k].data_ptr() for k in state if k.endswith(".shared_A")}
        assert len(pointers) == 3
        assert len(tuner_parameters(candidate)) == 3 * 2 + len(members)


def test_vera_bases_are_one_tensor_drawn_at_the_largest_shape_also_after_a_rebuild(tmp_path):
    """The bases are drawn once at (largest d_out, largest d_in) = (128, 128) over q, fc1 and fc2
    and every matrix uses their leading rows and columns; a state holds them once (one storage),
    and a rebuilt model ties them into one tensor again."""
    model, config = tuned_model("vera", targets="q,fc1,fc2", r=16, projection_seed=3)
    bases_A, bases_B = random_bases(16, 128, 128, 3)
    rebuilt = ctc_model(3)
    build_from_plan(rebuilt, transform_plan(model))
    rebuilt.load_state_dict(model.state_dict())
    for candidate in (model, rebuilt):
        members = [t for _, t in tuner_transforms(candidate)]
        assert len(members) == 6 and len({id(t.vera_A) for t in members}) == len({id(t.vera_B) for t in members}) == 1
        assert torch.equal(members[0].vera_A, bases_A) and torch.equal(members[0].vera_B, bases_B)
        state = candidate.state_dict()
        assert len({state[k].data_ptr() for k in state if k.endswith((".vera_A", ".vera_B"))}) == 2
    (_, fc1), = [(n, t) for n, t in tuner_transforms(model) if n.endswith("0.fc1.weight")]
    expected = (fc1.lambda_b[:, None] * bases_B[:128]) @ (fc1.lambda_d[:, None] * bases_A[:, :64])
    torch.testing.assert_close(fc1.delta(), expected)
    assert set(tuner_parameters(model)) == {n for n, _ in model.named_parameters() if ".lambda_" in n}


def test_the_s2lora_regulariser_is_the_papers_formula_and_its_gradient():
    model, config = tuned_model("s2lora")
    members = [t for _, t in tuner_transforms(model)]
    terms = regularisation_terms(model)
    pairs = {(t.group, t.weight_shape()): t for t in members if t.owner}
    r = config.r
    # Written out from Eq. 4: a1 * mean_i ||s_i||_1 + a2 / (2r) * sum_k (||B[:, k]|| + ||A[k, :]||), per pair.
    sparsity = config.sparsity_weight * torch.stack([t.coefficients.abs().sum() for t in members]).mean()
    factors = sum(config.factor_weight / (2 * r) * sum(t.shared_B[:, k].norm() + t.shared_A[k, :].norm()
                                                        for k in range(r)) for t in pairs.values())
    torch.testing.assert_close(terms[SPARSITY_TERM], sparsity)
    torch.testing.assert_close(terms[FACTORS_TERM], factors)
    parameters = list(tuner_parameters(model).values())
    ours = torch.autograd.grad(terms[SPARSITY_TERM] + terms[FACTORS_TERM], parameters)
    reference = torch.autograd.grad(sparsity + factors, parameters)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)


def test_s2lora_counts_a_rank_as_pruned_below_1e_minus_4():
    model, _ = tuned_model("s2lora", targets="q", layers="0")
    (name, member), = tuner_transforms(model, W2V_PREFIX)
    with torch.no_grad():
        member.coefficients.copy_(torch.tensor([1e-4, -1e-4, 0.99e-4, -0.99e-4, 0.0, 0.5, -2.0, 1e-5]))
    assert rank_distribution(model, W2V_PREFIX) == {name: 4}


@pytest.mark.parametrize("method, reads", [("glora", True), ("ia3", False), ("bitfit", False)])
def test_the_effective_bias_fetches_the_base_weight_only_for_a_tuner_that_reads_it(method, reads, monkeypatch):
    """Under a kept-only fixed mask fetching it expands the full matrix: IA3 and BitFit must not pay
    that on every forward pass."""
    from fairseq_subnets.core import transforms

    model, _ = tuned_model(method, targets="k")
    fetched = []
    monkeypatch.setattr(transforms, "base_weight", lambda module: fetched.append(module) or module.weight.detach())
    logits(model, audio())
    assert bool(fetched) == reads


@pytest.mark.parametrize("method", list(TUNERS))
def test_the_trained_count_read_off_a_saved_state_is_the_live_models(method, tmp_path):
    """After torch.save / torch.load, as a report reads a checkpoint: buffers left out, S2-LoRA's
    shared factors once."""
    model, _ = tuned_model(method, **EVERY_MATRIX)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert tuner_trained_count(loaded) == sum(p.numel() for p in tuner_parameters(model).values()) > 0


def test_the_ranks_in_use_read_off_a_bare_state_dict_as_the_live_transforms_count_them():
    for method in ("lora", "alpha_lora", "adalora", "s2lora", "dora"):
        model, _ = tuned_model(method)
        live = {name: (method, t.rank()) for name, t in tuner_transforms(model, W2V_PREFIX)}
        assert tuner_ranks(model.state_dict()) == live and live
    adalora, _ = tuned_model("adalora", targets="q", layers="1")
    (name, delta), = tuner_transforms(adalora, W2V_PREFIX)
    delta.keep(torch.tensor([True, False] * 6))
    assert tuner_ranks(adalora.state_dict()) == {name: ("adalora", 6)}
    assert tuner_ranks(tuned_model("ia3")[0].state_dict()) == tuner_ranks(tuned_model("vera")[0].state_dict()) == {}


def test_the_mask_digest_that_ranks_compare_covers_adaloras_kept_triplets():
    from fairseq_subnets.core.parametrize import mask_state_digest

    model, _ = tuned_model("adalora")
    before = mask_state_digest(model, W2V_PREFIX)
    _, delta = next(iter(tuner_transforms(model, W2V_PREFIX)))
    delta.keep(torch.tensor([True, False] * 6))
    assert before and mask_state_digest(model, W2V_PREFIX) != before
    assert mask_state_digest(tuned_model("lora")[0], W2V_PREFIX) == ""


def test_the_adalora_orthogonality_term_is_the_mean_deviation_over_every_factor():
    model, config = tuned_model("adalora")
    deltas = list(svd_deltas(model).values())
    identity = torch.eye(config.init_r)
    deviations = [n for d in deltas for n in ((d.lora_A @ d.lora_A.T - identity).norm(),
                                              (d.lora_B.T @ d.lora_B - identity).norm())]
    expected = config.orthogonality_weight * torch.stack(deviations).mean()
    torch.testing.assert_close(regularisation_terms(model)[ORTHOGONALITY_TERM], expected)


def test_the_adalora_budget_follows_its_cubic_schedule():
    config = tuner_config("adalora", total_updates=100, warmup_updates=10, final_updates=20, interval=5)
    matrices = 4
    assert budget_at(config, 0, matrices) == (48, False)
    assert budget_at(config, 10, matrices) == (48, False)
    # from 12 x 4 = 48 to 8 x 4 = 32; progress at 25: (25 - 10) / (100 - 20 - 10) = 3/14;
    # 32 + 16 (11/14)^3 = 39.76, rounded down; masking only at multiples of the interval 5
    assert budget_at(config, 25, matrices) == (39, True)
    assert budget_at(config, 26, matrices) == (int(32 + 16 * (54 / 70) ** 3), False)
    assert budget_at(config, 80, matrices) == (32, True)
    assert budget_at(config, 81, matrices) == (32, True)
    assert budget_at(config, 100, matrices) == (32, True)
    budgets = [budget_at(config, t, matrices)[0] for t in range(101)]
    assert all(a >= b for a, b in zip(budgets[:81], budgets[1:81]))


BAD_CONFIGS = [
    (("prefix_tuning", {}), "tuner: unknown method 'prefix_tuning'"),
    (("lora", {"r": 0}), r"lora.r: a rank is an integer >= 1 \(got 0\)"),
    (("s2lora", {"rank": 4}), "s2lora.rank: not an option of s2lora"),
    (("adalora", {"init_r": 4, "target_r": 8}), "adalora.target_r: 8 is above init_r 4"),
    (("adalora", {"total_updates": 30, "warmup_updates": 10, "final_updates": 20}),
     "adalora.total_updates: 30 leaves no update"),
    (("ia3", {"targets": "fc3"}), "ia3.targets"),
    (("s2lora", {"sparsity_weight": -1.0}), "s2lora.sparsity_weight: must be >= 0"),
    (("dora", {"alpha": 0.0}), "dora.alpha: must be > 0"),
    (("vera", {"d_initial": 0.0}), "vera.d_initial: a finite number other than 0 .got 0.0.; with d and b both"),
    (("vera", {"projection_seed": -1}), r"vera.projection_seed: an integer from 0 to 2\*\*63 - 1 \(got -1\)"),
]


@pytest.mark.parametrize("arguments,message", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_tuner_configs_fail_naming_the_option(arguments, message):
    method, options = arguments
    with pytest.raises(TunerError, match=message):
        tuner_config(method, **options)


def test_a_target_the_model_lacks_and_a_second_tuner_on_a_weight_are_refused():
    model = ctc_model(0)
    with pytest.raises(TunerError, match="lora.layers: layer 5 is selected but the model has 2 encoder layers"):
        inject_tuner(model, tuner_config("lora", layers="5"), W2V_PREFIX)
    inject_tuner(model, tuner_config("lora"), W2V_PREFIX)
    with pytest.raises(TunerError, match=r"encoder.layers.0.self_attn.v_proj.weight: already adapted by lora "
                                         r"'default'; two tuners on one weight are not supported"):
        inject_tuner(model, tuner_config("ia3"), W2V_PREFIX)


def test_a_tuner_error_carries_its_option_for_each_caller_to_name():
    with pytest.raises(TunerError) as caught:
        tuner_config("lora", alpha=0.0)
    assert (caught.value.method, caught.value.option, caught.value.reason) == ("lora", "alpha", "must be > 0 (got 0.0)")
    assert str(caught.value) == "lora.alpha: must be > 0 (got 0.0)"
    assert caught.value.message("model.tuner_alpha") == "model.tuner_alpha: must be > 0 (got 0.0)"


RANK_OPTIONS = [("lora", "r"), ("alpha_lora", "r"), ("glora", "r"), ("s2lora", "r"), ("adalora", "init_r")]


@pytest.mark.parametrize("method, rank_option", RANK_OPTIONS)
def test_a_rank_above_a_target_matrixs_rank_is_refused_naming_the_option(method, rank_option):
    """The tiny model's attention matrices are 64x64 and its feed-forward ones 128x64 / 64x128:
    a rank of 64 is the most any of them can use."""
    inject_tuner(ctc_model(0), config_of(method, **{rank_option: 64}), W2V_PREFIX)
    with pytest.raises(TunerError, match=rf"^{method}\.{rank_option}: 65 is above the rank 64 of "
                                         rf"encoder\.layers\.0\.self_attn\.q_proj\.weight \(64x64\)"):
        inject_tuner(ctc_model(0), config_of(method, **{rank_option: 65}), W2V_PREFIX)


def test_an_adalora_schedule_that_ends_after_the_run_is_refused():
    config = config_of("adalora", total_updates=1000)
    config.check_run(1000, "max_update")
    config.check_run(0, "max_update")  # no limit on the run's updates
    with pytest.raises(TunerError, match=r"^adalora.total_updates: 1000 is above max_update=999: the rank budget "
                                         r"would never shrink to target_r"):
        config.check_run(999, "max_update")


@pytest.mark.parametrize("method", ["lora", "alpha_lora", "adalora", "glora", "s2lora"])
def test_a_plan_entry_that_lacks_an_option_is_refused_naming_it(method):
    """A placeholder has no defaults of its own: every value comes from the plan (or the shape)."""
    model, _ = tuned_model(method, targets="q", layers="0")
    plan = transform_plan(model, W2V_PREFIX)
    build_from_plan(ctc_model(1), plan, W2V_PREFIX)
    (entry,) = plan
    for option in sorted(entry["options"]):
        lacking = [{**entry, "options": {k: v for k, v in entry["options"].items() if k != option}}]
        with pytest.raises(TransformError, match=rf"^transform plan entry 0 \({method} on encoder.layers.0.self_attn."
                                                 rf"q_proj.weight\): {method}: the transform plan's options lack "
                                                 rf"{option} "):
            build_from_plan(ctc_model(1), lacking, W2V_PREFIX)
    assert entry["options"]


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_a_model_rebuilt_from_its_plan_takes_non_default_options_from_it(method):
    options = {"lora": {"r": 3, "alpha": 5.0}, "adalora": {"init_r": 3, "target_r": 2, "alpha": 5.0}}[method]
    model, _ = tuned_model(method, targets="q", layers="0", **options)
    rebuilt = ctc_model(1)
    build_from_plan(rebuilt, transform_plan(model, W2V_PREFIX), W2V_PREFIX)
    ((_, original),), ((_, placeholder),) = tuner_transforms(model, W2V_PREFIX), tuner_transforms(rebuilt, W2V_PREFIX)
    assert placeholder.options() == original.options() and placeholder.options()["r"] == 3
    assert float(placeholder.alpha) == 5.0


PLANS_OF_0_4 = {
    "lora": ("lora", {"r": 4, "alpha": 16.0}),
    "alpha_lora": ("alpha_lora", {"r": 4}),
    "adalora": ("adalora", {"r": 4, "alpha": 8.0, "orthogonality_weight": 0.25}),
    "glora": ("glora", {"r": 4}),
    "bitfit": ("bitfit", {}),
    "ia3": ("ia3_out", {}),
    "s2lora": ("s2lora", {"r": 4, "group": "attention", "sparsity_weight": 0.01, "factor_weight": 0.1,
                          "owner": True}),
}
"""One transform plan entry per method as 0.4 recorded it in checkpoints (kind, options)."""


@pytest.mark.parametrize("method", list(PLANS_OF_0_4))
def test_a_plan_as_0_4_recorded_it_still_rebuilds_the_same_transform(method):
    kind, options = PLANS_OF_0_4[method]
    weight = "encoder.layers.0.self_attn.q_proj.weight"
    model = ctc_model(0)
    build_from_plan(model, [{"kind": kind, "name": "tuner", "options": options, "weights": [weight]}], W2V_PREFIX)
    ((name, transform),) = tuner_transforms(model, W2V_PREFIX)
    assert (name, transform.kind, transform.options()) == (weight, kind, options)
