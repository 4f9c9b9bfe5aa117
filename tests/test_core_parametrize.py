"""Masks through the weight tensor: fairseq's fused attention honours them, training keeps pruned
effective weights at zero, and masks come back out of modules and state dicts and bake away."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from fairseq.models.wav2vec.wav2vec2 import TransformerSentenceEncoderLayer
from fairseq.modules.multihead_attention import MultiheadAttention

from fairseq_subnets.core.parametrize import (
    apply_masks,
    bake_module,
    bake_state_dict,
    masks_from_module,
    masks_from_state_dict,
    prepare_for_state,
)
from fairseq_subnets.core.pruning import random_masks
from fairseq_subnets.core.transforms import FixedMask
from fairseq_subnets.techniques.learned_masks.layer import ScoreMask, apply_score_masks, binarise_scores

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def attention(dim=16, heads=2):
    torch.manual_seed(0)
    return MultiheadAttention(dim, heads, self_attention=True).eval()


def manual_attention(module, x, weights):
    """Self-attention written out from given projection weights (fairseq's biases)."""
    time, batch, dim = x.shape
    heads, head_dim = module.num_heads, dim // module.num_heads

    def project(name):
        y = F.linear(x, weights[name], getattr(module, name).bias)
        return y.reshape(time, batch * heads, head_dim).transpose(0, 1)

    q, k, v = project("q_proj") * head_dim ** -0.5, project("k_proj"), project("v_proj")
    context = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)
    context = context.transpose(0, 1).reshape(time, batch, dim)
    return F.linear(context, weights["out_proj"], module.out_proj.bias)


def projection_masks(module, sparsity, seed):
    shapes = {f"{p}.weight": getattr(module, p).weight.shape for p in PROJECTIONS}
    return random_masks(shapes, sparsity, seed=seed)


def test_fairseq_fused_attention_path_honours_the_masks():
    module = attention()
    x = torch.randn(5, 3, 16, generator=torch.Generator().manual_seed(1))
    raw = {p: getattr(module, p).weight.detach().clone() for p in PROJECTIONS}
    with torch.no_grad():
        dense, _ = module(x, x, x)
    assert torch.allclose(dense, manual_attention(module, x, raw), atol=1e-5)

    outputs = []
    for seed in (1, 2):
        masked_module = attention()
        masks = projection_masks(masked_module, 0.5, seed)
        apply_masks(masked_module, masks)
        with torch.no_grad():
            masked, _ = masked_module(x, x, x)
        expected = manual_attention(module, x, {p: raw[p] * masks[f"{p}.weight"] for p in PROJECTIONS})
        assert torch.allclose(masked, expected, atol=1e-5)
        outputs.append(masked)
    assert not torch.allclose(outputs[0], dense, atol=1e-3)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


def test_all_zero_masks_on_q_and_k_make_attention_uniform():
    module = attention()
    x = torch.randn(4, 2, 16)
    apply_masks(module, {f"{p}.weight": torch.zeros(16, 16, dtype=torch.bool) for p in ("q_proj", "k_proj")})
    with torch.no_grad():
        _, weights = module(x, x, x, need_weights=True)
    assert torch.allclose(weights, torch.full_like(weights, 1 / 4))


def test_state_dict_keys_of_a_masked_module():
    module = attention()
    apply_masks(module, {"q_proj.weight": torch.ones(16, 16, dtype=torch.bool)})
    keys = set(module.state_dict())
    mask_key = "q_proj.parametrizations.weight.0.fixed_mask.default.mask"
    assert {"q_proj.parametrizations.weight.original", mask_key} <= keys
    assert "q_proj.weight" not in keys and "k_proj.weight" in keys
    assert module.state_dict()[mask_key].dtype == torch.bool


def tiny_layer():
    torch.manual_seed(0)
    return TransformerSentenceEncoderLayer(embedding_dim=16, ffn_embedding_dim=32, num_attention_heads=2,
                                           dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def layer_masks(layer, sparsity=0.6, seed=3):
    shapes = {name: p.shape for name, p in layer.named_parameters() if name.endswith("weight") and p.dim() == 2}
    return random_masks(shapes, sparsity, seed=seed)


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
])
def test_pruned_effective_weights_stay_exactly_zero_through_training(optimizer):
    layer = tiny_layer().train()
    masks = layer_masks(layer)
    apply_masks(layer, masks)
    step = optimizer(layer.parameters())
    generator = torch.Generator().manual_seed(4)
    for _ in range(5):
        x = torch.randn(6, 2, 16, generator=generator)
        output, _ = layer(x)
        step.zero_grad()
        output.pow(2).mean().backward()
        step.step()
    for name, mask in masks.items():
        weight = layer.get_submodule(name[: -len(".weight")]).weight
        assert torch.count_nonzero(weight[~mask]) == 0, name
        assert torch.count_nonzero(weight[mask]) == int(mask.sum()), name
    assert all(torch.equal(masks_from_module(layer)[name], mask) for name, mask in masks.items())


class FullWeightWhereMask(torch.nn.Module):
    """Reference: the textbook fixed mask, full raw weight stored, effective = where(mask, W, 0)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight):
        return torch.where(self.mask, weight, 0.0)


def test_kept_only_storage_trains_exactly_like_masking_the_full_weight():
    masks = layer_masks(tiny_layer())
    ours, reference = tiny_layer().train(), tiny_layer().train()
    apply_masks(ours, masks)
    for name, mask in masks.items():
        parametrize.register_parametrization(reference.get_submodule(name[: -len(".weight")]), "weight",
                                             FullWeightWhereMask(mask))
    optimizers = [torch.optim.Adam(model.parameters(), lr=1e-2) for model in (ours, reference)]
    generator = torch.Generator().manual_seed(6)
    for _ in range(4):
        x = torch.randn(6, 2, 16, generator=generator)
        for model, optimizer in zip((ours, reference), optimizers):
            optimizer.zero_grad()
            model(x)[0].pow(2).mean().backward()
            optimizer.step()
    for name, mask in masks.items():
        ours_weight, reference_weight = (m.get_submodule(name[: -len(".weight")]).weight for m in (ours, reference))
        assert torch.equal(ours_weight, reference_weight), name
    trained = sum(p.numel() for p in ours.parameters())
    assert trained == sum(p.numel() for p in reference.parameters()) - sum(int((~m).sum()) for m in masks.values())


def test_only_kept_weights_are_stored_and_reapplying_replaces_the_mask():
    layer = tiny_layer()
    dense = layer.fc1.weight.detach().clone()
    masks = layer_masks(layer)
    apply_masks(layer, masks)
    mask = masks["fc1.weight"]
    stored = layer.fc1.parametrizations.weight.original
    assert stored.shape == (int(mask.sum()),) and stored.requires_grad
    assert torch.equal(stored, dense[mask])  # row-major order of the kept positions
    assert torch.equal(layer.fc1.weight, torch.where(mask, dense, 0.0))
    assert layer.state_dict()["fc1.parametrizations.weight.original"].shape == stored.shape

    tighter = mask & random_masks({"fc1.weight": (32, 16)}, 0.5, seed=9)["fc1.weight"]
    apply_masks(layer, {"fc1.weight": tighter})
    assert len(layer.fc1.parametrizations.weight) == 1
    assert torch.equal(masks_from_module(layer)["fc1.weight"], tighter)
    assert torch.equal(layer.fc1.weight, torch.where(tighter, dense, 0.0))
    looser = torch.ones(32, 16, dtype=torch.bool)
    apply_masks(layer, {"fc1.weight": looser})
    assert torch.equal(layer.fc1.weight, torch.where(tighter, dense, 0.0))  # no old values come back


def test_a_checkpoint_with_another_mask_loads_only_after_that_mask_is_applied():
    source, target = tiny_layer(), tiny_layer()
    apply_masks(source, {"fc1.weight": layer_masks(source, seed=3)["fc1.weight"]})
    other = layer_masks(target, sparsity=0.3, seed=4)["fc1.weight"]
    apply_masks(target, {"fc1.weight": other})
    with pytest.raises(RuntimeError, match="size mismatch") as refused:
        target.load_state_dict(source.state_dict())
    assert "fc1.parametrizations.weight.0.fixed_mask.default.mask keeps 205 weights, the model's 358" in str(
        refused.value)
    assert torch.equal(masks_from_module(target)["fc1.weight"], other)  # untouched by the failed load
    target.load_state_dict(prepare_for_state(target, source.state_dict()))
    assert torch.equal(target.fc1.weight, source.fc1.weight)


def test_same_mask_positions_reload_into_the_scatter_index():
    """Equal kept counts but other positions: loading the mask must also move the scatter index."""
    source, target = tiny_layer(), tiny_layer()
    first = torch.zeros(32, 16, dtype=torch.bool)
    first[:, :8] = True
    apply_masks(source, {"fc1.weight": first})
    apply_masks(target, {"fc1.weight": ~first})
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.fc1.weight, source.fc1.weight)
    assert torch.count_nonzero(target.fc1.weight[:, 8:]) == 0


def test_apply_masks_with_a_prefix_and_clear_errors():
    root = torch.nn.Module()
    root.inner = tiny_layer()
    masks = layer_masks(root.inner)
    apply_masks(root, masks, prefix="inner.")
    assert masks_from_module(root, prefix="inner.").keys() == masks.keys()
    with pytest.raises(ValueError, match="fc9.weight: the model has no module 'inner.fc9'"):
        apply_masks(root, {"fc9.weight": masks["fc1.weight"]}, prefix="inner.")
    with pytest.raises(ValueError, match=r"fc1.weight: mask shape \(3, 3\) != weight shape \(32, 16\)"):
        apply_masks(root, {"fc1.weight": torch.ones(3, 3, dtype=torch.bool)}, prefix="inner.")


def test_masks_from_state_dict_and_bake_state_dict_without_a_model():
    layer = tiny_layer()
    masks = layer_masks(layer)
    apply_masks(layer, masks)
    state = {f"w2v_encoder.w2v_model.encoder.layers.0.{k}": v for k, v in layer.state_dict().items()}
    stored = masks_from_state_dict(state)
    assert set(stored) == {f"encoder.layers.0.{name}" for name in masks}
    assert all(torch.equal(stored[f"encoder.layers.0.{n}"], m) for n, m in masks.items())

    baked = bake_state_dict(state)
    assert not any("parametrizations" in key for key in baked)
    bake_module(layer)
    assert set(layer.state_dict()) == {k[len("w2v_encoder.w2v_model.encoder.layers.0."):] for k in baked}
    for key, value in layer.state_dict().items():
        assert torch.equal(baked[f"w2v_encoder.w2v_model.encoder.layers.0.{key}"], value), key
    assert torch.count_nonzero(layer.fc2.weight[~masks["fc2.weight"]]) == 0


def test_bake_state_dict_applies_extra_masks_and_names_missing_weights():
    state = {"encoder.layers.0.fc1.weight": torch.ones(2, 3), "encoder.layers.0.fc1.bias": torch.ones(2)}
    mask = torch.tensor([[True, False, True], [False, False, True]])
    baked = bake_state_dict(state, masks={"encoder.layers.0.fc1.weight": mask})
    assert torch.equal(baked["encoder.layers.0.fc1.weight"], mask.float())
    assert torch.equal(state["encoder.layers.0.fc1.weight"], torch.ones(2, 3))
    with pytest.raises(ValueError, match="encoder.layers.1.fc1.weight: no 'encoder.layers.1.fc1.weight'"):
        bake_state_dict(state, masks={"encoder.layers.1.fc1.weight": mask})


def test_bake_state_dict_reads_full_raw_weights_of_older_fixed_masks_and_checks_sizes():
    mask = torch.tensor([[True, False], [False, True]])
    older = {"fc1.parametrizations.weight.original": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
             "fc1.parametrizations.weight.0.mask": mask}
    assert torch.equal(bake_state_dict(older, prefix="")["fc1.weight"], torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    kept_only = {**older, "fc1.parametrizations.weight.original": torch.tensor([1.0, 4.0])}
    assert torch.equal(bake_state_dict(kept_only, prefix="")["fc1.weight"], torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    wrong = {**older, "fc1.parametrizations.weight.original": torch.tensor([1.0, 2.0, 3.0])}
    with pytest.raises(ValueError, match=r"original: holds 3 values; its mask of shape \(2, 2\) keeps 2"):
        bake_state_dict(wrong, prefix="")


def test_bake_state_dict_refuses_foreign_parametrizations():
    state = {"encoder.layers.0.fc1.parametrizations.weight.original": torch.ones(2, 2),
             "encoder.layers.0.fc1.parametrizations.weight.0.lora_A": torch.ones(1, 2)}
    with pytest.raises(ValueError, match="0.lora_A: not a fairseq-subnets weight transform"):
        bake_state_dict(state)


def test_bake_state_dict_names_the_key_of_an_unregistered_kind_and_the_import_that_registers_kinds():
    state = {"encoder.layers.0.fc1.parametrizations.weight.original": torch.ones(2, 2),
             "encoder.layers.0.fc1.parametrizations.weight.0.lora9.a.delta": torch.ones(2, 2)}
    with pytest.raises(ValueError, match=r"^encoder.layers.0.fc1.parametrizations.weight.0.lora9.a: unknown kind "
                                         r"'lora9' .* its package fairseq_subnets.techniques.<name> is imported"):
        bake_state_dict(state)


def test_score_mask_keeps_the_top_scores_and_trains_them_straight_through():
    layer = tiny_layer()
    for parameter in layer.parameters():
        parameter.requires_grad_(False)
    initial = layer.fc1.weight.detach().abs().clone()
    added = apply_score_masks(layer, {"fc1.weight": initial}, sparsity=0.75)
    kept = binarise_scores(initial, 384)
    assert int(kept.sum()) == 128
    assert torch.equal(masks_from_module(layer)["fc1.weight"], kept)
    assert torch.equal(layer.fc1.weight, layer.fc1.parametrizations.weight.original * kept)

    scores = added["fc1.weight"].scores
    x = torch.randn(6, 2, 16, generator=torch.Generator().manual_seed(5))
    with parametrize.cached():
        effective = layer.fc1.weight
        effective.retain_grad()
        output, _ = layer(x)
        output.pow(2).mean().backward()
    raw = layer.fc1.parametrizations.weight.original
    assert torch.allclose(scores.grad, effective.grad * raw)  # straight through: dL/dscores = dL/dmask
    assert torch.count_nonzero(scores.grad[~kept]) > 0
    torch.optim.SGD([scores], lr=1e6).step()
    assert not torch.equal(masks_from_module(layer)["fc1.weight"], kept)
    assert int(masks_from_module(layer)["fc1.weight"].sum()) == 128

    state = layer.state_dict()
    assert {"fc1.parametrizations.weight.0.score_mask.default.scores",
            "fc1.parametrizations.weight.0.score_mask.default.n_pruned"} <= set(state)
    stored = masks_from_state_dict({f"encoder.layers.0.{k}": v for k, v in state.items()})
    assert torch.equal(stored["encoder.layers.0.fc1.weight"], masks_from_module(layer)["fc1.weight"])


def test_mask_modules_are_plain_and_typed():
    mask = torch.tensor([True, False])
    assert torch.equal(FixedMask(mask).expand(torch.tensor([2.0])), torch.tensor([2.0, 0.0]))
    assert torch.equal(FixedMask(mask).compact(torch.tensor([2.0, float("inf")])), torch.tensor([2.0]))
    assert torch.equal(FixedMask(mask)(torch.tensor([2.0, 3.0])), torch.tensor([2.0, 0.0]))
    score_mask = ScoreMask(torch.tensor([0.1, 0.9, 0.5, 0.2]), sparsity=0.5)
    assert score_mask(torch.ones(4)).tolist() == [0.0, 1.0, 1.0, 0.0]
