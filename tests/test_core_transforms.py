"""The weight-transform stack: every kind and every composition a method uses goes through fairseq's
real MultiheadAttention fast path, round-trips through a state dict into a model rebuilt from its
plan, and bakes to exactly its forward pass; masks apply after deltas, so pruned weights stay 0."""
import json

import pytest
import torch
from fairseq.modules.multihead_attention import MultiheadAttention
from torch import nn

from fairseq_subnets.core.parametrize import (
    apply_masks,
    bake_module,
    bake_state_dict,
    mask_state_digest,
    masks_from_module,
    masks_from_state_dict,
    prepare_for_state,
)
from fairseq_subnets.core.pruning import random_masks
from fairseq_subnets.core.transforms import (
    ADAPT,
    DenseMask,
    FixedMask,
    TransformError,
    WeightTransform,
    add_transform,
    build_from_plan,
    parse_plan,
    regularisation_terms,
    register_transform_kind,
    remove_transform,
    select_language,
    stack_of,
    transform_plan,
)
from fairseq_subnets.techniques.learned_masks.layer import apply_score_masks
from fairseq_subnets.techniques.pathways.layer import apply_language_masks

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
DIM = 16


@register_transform_kind
class ScaledDelta(WeightTransform):
    """A stand-in adaptation for these tests (LoRA-like: W + scale * D), with a regulariser."""

    kind = "test_scaled_delta"
    stage = ADAPT

    def __init__(self, delta: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.delta = torch.nn.Parameter(delta.clone())
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, weight):
        return weight + self.scale * self.delta

    def weight_shape(self):
        return tuple(self.delta.shape)

    @classmethod
    def placeholder(cls, shape, options):
        return cls(torch.zeros(shape))

    def regularisation_term_names(self):
        return ("test_l1",)

    def regularisation_term(self, name):
        return self.delta.abs().sum()


def attention():
    torch.manual_seed(0)
    return MultiheadAttention(DIM, 2, self_attention=True).eval()


def masks_for(seed, sparsity=0.5):
    return random_masks({f"{p}.weight": (DIM, DIM) for p in PROJECTIONS}, sparsity, seed=seed)


def deltas(seed):
    generator = torch.Generator().manual_seed(seed)
    return {p: torch.randn(DIM, DIM, generator=generator) for p in PROJECTIONS}


def add_deltas(module, seed):
    for p, delta in deltas(seed).items():
        add_transform(getattr(module, p), "delta", ScaledDelta(delta, 0.5))


COMPOSITIONS = {
    "fixed": lambda m: apply_masks(m, masks_for(1)),
    "dense": lambda m: apply_masks(m, masks_for(1), storage="dense"),
    "score": lambda m: apply_score_masks(m, {f"{p}.weight": getattr(m, p).weight.detach().abs() for p in PROJECTIONS},
                                         sparsity=0.3),
    "languages": lambda m: (apply_language_masks(m, {"es": masks_for(1), "ca": masks_for(2)}),
                            select_language(m, "ca")),
    "delta": lambda m: add_deltas(m, 3),
    "delta+fixed": lambda m: (add_deltas(m, 3), apply_masks(m, masks_for(1))),
    "fixed+delta": lambda m: (apply_masks(m, masks_for(1)), add_deltas(m, 3)),
    "dense+languages": lambda m: (apply_masks(m, masks_for(4, 0.2), storage="dense"),
                                  apply_language_masks(m, {"es": masks_for(1), "ca": masks_for(2)}),
                                  select_language(m, "es")),
    "delta+score": lambda m: (add_deltas(m, 3), COMPOSITIONS["score"](m)),
}


def manual_attention(module, x, weights):
    """Self-attention written out from given projection weights (fairseq's biases)."""
    time, batch, dim = x.shape
    heads, head_dim = module.num_heads, dim // module.num_heads

    def project(name):
        y = torch.nn.functional.linear(x, weights[name], getattr(module, name).bias)
        return y.reshape(time, batch * heads, head_dim).transpose(0, 1)

    q, k, v = project("q_proj") * head_dim ** -0.5, project("k_proj"), project("v_proj")
    context = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)
    return torch.nn.functional.linear(context.transpose(0, 1).reshape(time, batch, dim), weights["out_proj"],
                                      module.out_proj.bias)


def expected_weights(raw, name):
    """The effective weights each composition must give, computed independently of the stack."""
    delta = {p: raw[p] + 0.5 * d for p, d in deltas(3).items()}
    fixed = {p: raw[p] * masks_for(1)[f"{p}.weight"] for p in PROJECTIONS}
    expected = {
        "fixed": fixed,
        "dense": fixed,
        "delta": delta,
        "delta+fixed": {p: delta[p] * masks_for(1)[f"{p}.weight"] for p in PROJECTIONS},
        "languages": {p: raw[p] * masks_for(2)[f"{p}.weight"] for p in PROJECTIONS},
        "dense+languages": {p: raw[p] * masks_for(4, 0.2)[f"{p}.weight"] * masks_for(1)[f"{p}.weight"]
                            for p in PROJECTIONS},
    }
    expected["fixed+delta"] = expected["delta+fixed"]
    return expected.get(name)


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_fused_attention_honours_every_composition_and_bake_equals_forward(name):
    module = attention()
    raw = {p: getattr(module, p).weight.detach().clone() for p in PROJECTIONS}
    x = torch.randn(5, 3, DIM, generator=torch.Generator().manual_seed(7))
    COMPOSITIONS[name](module)
    effective = {p: getattr(module, p).weight.detach().clone() for p in PROJECTIONS}
    want = expected_weights(raw, name)
    if want is not None:
        for p in PROJECTIONS:
            assert torch.equal(effective[p], want[p]), p
    with torch.no_grad():
        output, _ = module(x, x, x)
    assert torch.allclose(output, manual_attention(module, x, effective), atol=1e-5)
    assert not torch.allclose(output, manual_attention(module, x, raw), atol=1e-4)

    baked_state = bake_state_dict(module.state_dict(), prefix="", language="ca" if "languages" == name else
                                  "es" if name == "dense+languages" else None)
    for p in PROJECTIONS:
        assert torch.equal(baked_state[f"{p}.weight"], effective[p]), p
    bake_module(module)
    assert not any("parametrizations" in key for key in module.state_dict())
    with torch.no_grad():
        assert torch.equal(module(x, x, x)[0], output)


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_every_composition_round_trips_into_a_model_rebuilt_from_its_plan(name):
    trained = attention()
    COMPOSITIONS[name](trained)
    with torch.no_grad():  # training moved every state tensor
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    plan = json.loads(json.dumps(transform_plan(trained)))  # what a model config stores
    rebuilt = attention()
    build_from_plan(rebuilt, parse_plan(json.dumps(plan), "test"))
    rebuilt.load_state_dict(prepare_for_state(rebuilt, trained.state_dict()))
    if "languages" in name:
        select_language(rebuilt, "ca" if name == "languages" else "es")
    for p in PROJECTIONS:
        assert torch.equal(getattr(rebuilt, p).weight, getattr(trained, p).weight), p
    assert mask_state_digest(rebuilt) == mask_state_digest(trained)


def test_a_fixed_mask_rebuilt_from_its_plan_allocates_no_weights_before_its_state_loads():
    """At XLS-R 300M size an all-kept placeholder would cost the full weights plus an 8-byte index
    per weight before the stored mask shrinks them."""
    trained = attention()
    apply_masks(trained, masks_for(1, 0.5))
    rebuilt = attention()
    build_from_plan(rebuilt, parse_plan(json.dumps(transform_plan(trained)), "test"))
    for p in PROJECTIONS:
        assert getattr(rebuilt, p).parametrizations.weight.original.numel() == 0, p
    rebuilt.load_state_dict(prepare_for_state(rebuilt, trained.state_dict()))
    for p in PROJECTIONS:
        assert torch.equal(getattr(rebuilt, p).weight, getattr(trained, p).weight), p


def test_masks_apply_after_deltas_so_pruned_weights_stay_zero_through_training():
    module = attention().train()
    masks = masks_for(1, 0.7)
    apply_masks(module, masks)
    add_deltas(module, 3)  # registered after the mask: still applied before it
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.05, weight_decay=0.1)
    x = torch.randn(5, 3, DIM)
    for _ in range(3):
        optimizer.zero_grad()
        module(x, x, x)[0].pow(2).sum().backward()
        optimizer.step()
    for p in PROJECTIONS:
        weight = getattr(module, p).weight
        assert torch.count_nonzero(weight[~masks[f"{p}.weight"]]) == 0, p
        assert torch.count_nonzero(weight[masks[f"{p}.weight"]]) == int(masks[f"{p}.weight"].sum()), p


def test_re_masking_keeps_other_transforms():
    module = attention()
    add_deltas(module, 3)
    apply_masks(module, masks_for(1))
    tighter = {k: v & masks_for(5)[k] for k, v in masks_for(1).items()}
    apply_masks(module, tighter)
    stack = stack_of(module.q_proj)
    assert [kind for kind, _ in stack.order] == ["test_scaled_delta", "fixed_mask"]
    assert torch.equal(masks_from_module(module)["q_proj.weight"], tighter["q_proj.weight"])


def test_dense_mask_changes_in_place_keeping_the_parameter_and_adams_state():
    module = attention().train()
    apply_masks(module, masks_for(1), storage="dense")
    stored = module.q_proj.parametrizations.weight.original
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    x = torch.randn(5, 3, DIM)
    module(x, x, x)[0].pow(2).sum().backward()
    optimizer.step()
    moment = optimizer.state[stored]["exp_avg"].clone()
    new_masks = masks_for(2, 0.8)
    apply_masks(module, new_masks, storage="dense")
    assert module.q_proj.parametrizations.weight.original is stored
    assert stored.shape == (DIM, DIM) and torch.equal(optimizer.state[stored]["exp_avg"], moment)
    assert torch.equal(module.q_proj.weight, stored.detach() * new_masks["q_proj.weight"])
    assert torch.equal(masks_from_module(module)["q_proj.weight"], new_masks["q_proj.weight"])


def test_language_masks_switch_per_batch_and_refuse_unknown_or_unselected_languages():
    module = attention()
    apply_language_masks(module, {"es": masks_for(1), "ca": masks_for(2)})
    x = torch.randn(4, 2, DIM)
    with pytest.raises(TransformError, match=r"per-language masks \(es, ca\) but no language selected"):
        module(x, x, x)
    outputs = {}
    for language in ("es", "ca", "es"):
        select_language(module, language)
        with torch.no_grad():
            outputs.setdefault(language, []).append(module(x, x, x)[0])
        assert torch.equal(masks_from_module(module)["k_proj.weight"], masks_for(1 if language == "es" else 2)["k_proj.weight"])
    assert torch.equal(outputs["es"][0], outputs["es"][1])
    assert not torch.allclose(outputs["es"][0], outputs["ca"][0])
    with pytest.raises(TransformError, match=r"no mask for language 'pl' \(masks: es, ca\)"):
        select_language(module, "pl")
    with pytest.raises(TransformError, match="holds per-language masks .*name the language"):
        masks_from_state_dict(module.state_dict(), prefix="")
    assert torch.equal(masks_from_state_dict(module.state_dict(), prefix="", language="ca")["v_proj.weight"],
                       masks_for(2)["v_proj.weight"])


def test_removing_transforms_restores_a_plain_weight():
    module = attention()
    raw = module.k_proj.weight.detach().clone()
    add_deltas(module, 3)
    apply_masks(module, masks_for(1))
    remove_transform(module.k_proj, "test_scaled_delta", "delta")
    assert torch.equal(module.k_proj.weight, raw * masks_for(1)["k_proj.weight"])
    remove_transform(module.k_proj, "fixed_mask", "default")
    assert "weight" in module.k_proj._parameters
    assert torch.equal(module.k_proj.weight, raw * masks_for(1)["k_proj.weight"])


def test_clear_errors():
    module = attention()
    with pytest.raises(TransformError, match=r"dense_mask 'x' of shape \(3, 3\) on a weight of shape \(16, 16\)"):
        add_transform(module.q_proj, "x", DenseMask(torch.ones(3, 3, dtype=torch.bool)))
    apply_masks(module, masks_for(1))
    with pytest.raises(TransformError, match="already holds a fixed mask; use replace_fixed_mask"):
        add_transform(module.q_proj, "other", FixedMask(torch.ones(DIM, DIM, dtype=torch.bool)))
    add_transform(module.q_proj, "pathways", DenseMask(torch.ones(DIM, DIM, dtype=torch.bool)))
    with pytest.raises(TransformError, match="already holds a dense_mask named 'pathways'"):
        add_transform(module.q_proj, "pathways", DenseMask(torch.ones(DIM, DIM, dtype=torch.bool)))
    with pytest.raises(TransformError, match="mask storage 'sparse'"):
        apply_masks(module, masks_for(1), storage="sparse")
    with pytest.raises(TransformError, match="plan entry 0: unknown kind 'lora9' .*importing fairseq_subnets.plugin "
                                             "imports them all"):
        build_from_plan(attention(), [{"kind": "lora9", "name": "a", "options": {}, "weights": ["q_proj.weight"]}])
    with pytest.raises(TransformError, match="model.transform_plan: not a transform plan"):
        parse_plan("{oops", "model.transform_plan")
    other = attention()
    COMPOSITIONS["delta"](other)
    with pytest.raises(RuntimeError, match="holds transforms test_scaled_delta/delta that the model config does not"):
        module.load_state_dict(other.state_dict())


def test_regularisation_terms_are_collected_by_name_and_can_be_skipped():
    module = attention()
    add_deltas(module, 3)
    terms = regularisation_terms(module)
    assert set(terms) == {"test_l1"}
    expected = sum(d.abs().sum() for d in deltas(3).values())
    assert torch.allclose(terms["test_l1"], expected)
    terms["test_l1"].backward()
    assert torch.equal(module.q_proj.parametrizations.weight[0].test_scaled_delta["delta"].delta.grad,
                       torch.sign(deltas(3)["q_proj"]))
    assert regularisation_terms(module, wanted=lambda name: False) == {}


def test_eval_mode_reuses_the_effective_weight_until_something_it_depends_on_changes():
    """Decoding pays for a transformed weight once, not per forward pass; a language switch, a
    state change or a change of mode makes it anew."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    masks = {"es": torch.rand(6, 8) < 0.5, "ca": torch.rand(6, 8) < 0.5}
    apply_language_masks(model, {language: {"0.weight": mask} for language, mask in masks.items()})
    layer, original = model[0], model[0].parametrizations.weight.original
    select_language(model, "es")
    model.eval()
    with torch.no_grad():
        first = layer.weight
        assert layer.weight is first and torch.equal(first, original * masks["es"])
        select_language(model, "ca")
        assert torch.equal(layer.weight, original * masks["ca"])
        original.mul_(2)  # an in-place change of the stored weight
        assert torch.equal(layer.weight, original * masks["ca"])
        original.data.mul_(2)  # as optimizers step: no version counter sees it, until the mode changes
        model.train()
        model.eval()
        assert torch.equal(layer.weight, original * masks["ca"])
    assert layer.weight is not layer.weight  # with gradients: computed at each access
