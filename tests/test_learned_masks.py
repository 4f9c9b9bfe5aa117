"""Learned masks on frozen weights (S3-Router): score initialisation, the straight-through top-k,
exact k at every forward pass, the global top-k, the model keys that add them, and the frozen
weights around them. Real fairseq runs are in test_learned_masks_training."""
import re

import pytest
import torch
from torch import nn

from factory import TINY, host_model as build
from fairseq_subnets.core.parametrize import masks_from_module
from fairseq_subnets.core.pruning import global_l1_masks, layer_l1_masks, pruned_count
from fairseq_subnets.plugin.components.errors import PluginInputError
from fairseq_subnets.plugin.components.models import W2V_PREFIX
from fairseq_subnets.techniques.learned_masks.layer import GlobalTopK, ScoreMask, apply_score_masks, score_masks
from fairseq_subnets.techniques.learned_masks.scores import ordered_random_scores, random_scores

FFN = [f"encoder.layers.{layer}.{kind}.weight" for layer in range(TINY["layers"]) for kind in ("fc1", "fc2")]


def encoder_weights(model, names):
    return {name: model.get_submodule(W2V_PREFIX + name[: -len(".weight")]).parametrizations.weight.original.detach()
            for name in names}


def test_ori_scores_rank_exactly_like_the_weight_magnitudes_even_with_ties():
    weight = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    weight[0, :8] = 0.5  # equal magnitudes: position order decides, as pruning's tie rule does
    weight[1, :8] = -0.5
    scores = ordered_random_scores(weight, torch.Generator().manual_seed(1))
    assert torch.equal(torch.argsort(scores.flatten(), stable=True), torch.argsort(weight.abs().flatten(), stable=True))
    assert torch.unique(scores).numel() == scores.numel()
    # RI's values, only reordered: same scale as random init
    assert torch.equal(torch.sort(scores.flatten()).values,
                       torch.sort(random_scores(weight, torch.Generator().manual_seed(1)).flatten()).values)
    bound = 1 / 32 ** 0.5
    assert -bound <= float(scores.min()) and float(scores.max()) <= bound


@pytest.mark.parametrize("init", ["wmi", "ori"])
def test_the_first_mask_of_wmi_and_ori_is_the_magnitude_mask_of_the_weights(init):
    model = build(score_sparsity=0.1, score_init=init, score_targets="all")
    weights = encoder_weights(model, score_masks(model, W2V_PREFIX))
    assert len(weights) == 6 * TINY["layers"]
    expected = layer_l1_masks(weights, 0.1)  # torch.nn.utils.prune.l1_unstructured per matrix (test_core_pruning)
    held = masks_from_module(model, W2V_PREFIX)
    assert held.keys() == expected.keys() and all(torch.equal(held[n], expected[n]) for n in expected)


def test_wmi_with_the_global_scope_starts_from_global_l1_over_the_selected_matrices():
    model = build(score_sparsity=0.3, score_init="wmi", score_targets="ffn", score_scope="global")
    weights = encoder_weights(model, FFN)
    expected = global_l1_masks(weights, 0.3)
    model.eval()
    model(source=torch.randn(1, 4000), padding_mask=None)
    held = masks_from_module(model, W2V_PREFIX)
    assert all(torch.equal(held[name], expected[name]) for name in FFN)
    assert sum(int((~m).sum()) for m in held.values()) == pruned_count(0.3, sum(w.numel() for w in weights.values()))


def test_random_init_gives_a_mask_unrelated_to_the_weights():
    model = build(score_sparsity=0.5, score_init="ri")
    held = masks_from_module(model, W2V_PREFIX)
    magnitude = layer_l1_masks(encoder_weights(model, FFN), 0.5)
    agreement = sum(int((held[n] == magnitude[n]).sum()) for n in FFN) / sum(m.numel() for m in held.values())
    assert 0.4 < agreement < 0.6


def test_the_straight_through_gradient_of_the_scores_is_the_gradient_of_the_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    layer = model[0]
    layer.weight.requires_grad_(False)
    (score_mask,) = apply_score_masks(model, {"0.weight": torch.randn(5, 6)}, sparsity=0.4).values()
    x = torch.randn(3, 6)
    loss = layer(x).pow(2).sum()
    loss.backward()

    # the same loss with the 0/1 mask as a leaf: autograd's dL/dmask
    mask = score_mask.kept().float().requires_grad_(True)
    reference = nn.functional.linear(x, layer.parametrizations.weight.original * mask, layer.bias).pow(2).sum()
    reference.backward()
    assert torch.equal(loss.detach(), reference.detach())
    assert torch.count_nonzero(score_mask.scores.grad) > 0
    torch.testing.assert_close(score_mask.scores.grad, mask.grad, rtol=0, atol=1e-6)
    assert layer.parametrizations.weight.original.grad is None


@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_the_kept_count_is_exact_at_every_training_forward_pass(scope):
    model = build(score_sparsity=0.07, score_targets="all", score_scope=scope)
    members = score_masks(model, W2V_PREFIX)
    optimizer = torch.optim.SGD([m.scores for m in members.values()], lr=50.0)
    total = sum(m.scores.numel() for m in members.values())
    model.train()
    for step in range(4):
        kept_in_forward = {}
        hooks = [m.register_forward_hook(lambda module, args, out, name=name: kept_in_forward.__setitem__(
            name, int(torch.count_nonzero(out == 0)))) for name, m in members.items()]
        out = model(source=torch.randn(2, 4000, generator=torch.Generator().manual_seed(step)), padding_mask=None)
        for hook in hooks:
            hook.remove()
        out["encoder_out"].pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        # the forward passes multiplied by masks that prune exactly k (weights are nonzero almost surely)
        pruned = sum(kept_in_forward.values())
        if scope == "global":
            assert pruned == pruned_count(0.07, total)
        else:
            assert all(kept_in_forward[n] == pruned_count(0.07, m.scores.numel()) for n, m in members.items())


def test_outside_training_the_mask_is_computed_once_and_reused(monkeypatch):
    import fairseq_subnets.techniques.learned_masks.layer as layer

    model = build(score_sparsity=0.1).eval()
    calls = []
    real = layer.prune_smallest
    monkeypatch.setattr(layer, "prune_smallest", lambda *a, **k: calls.append(1) or real(*a, **k))
    source = torch.randn(1, 4000)
    with torch.no_grad():
        first = model(source=source, padding_mask=None)["encoder_out"]
        after_one = len(calls)
        second = model(source=source, padding_mask=None)["encoder_out"]
    assert after_one == len(FFN) and len(calls) == after_one  # no top-k in the second pass
    assert torch.equal(first, second)
    model.train()
    model.eval()
    with torch.no_grad():
        model(source=source, padding_mask=None)
    assert len(calls) == 2 * after_one  # a mode change drops the cached masks


def test_only_the_scores_and_the_ctc_head_train_by_default_and_biases_and_layer_norms_on_request():
    trainable = {name for name, p in build(score_sparsity=0.1).named_parameters() if p.requires_grad}
    assert trainable == {f"{W2V_PREFIX}{name[:-len('.weight')]}.parametrizations.weight.0.score_mask.learned.scores"
                         for name in FFN} | {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias"}
    extended = build(score_sparsity=0.1, score_train_biases=True, score_train_layer_norms=True)
    extra = {name for name, p in extended.named_parameters() if p.requires_grad} - trainable
    assert f"{W2V_PREFIX}encoder.layers.0.fc1.bias" in extra
    assert f"{W2V_PREFIX}encoder.layers.0.final_layer_norm.weight" in extra
    assert all(name.endswith((".bias", ".weight")) and ("norm" in name or name.endswith(".bias")) for name in extra)


def test_fairseqs_encoder_freeze_does_not_stop_the_scores():
    model = build(score_sparsity=0.1, freeze_finetune_updates=10_000)
    model.set_num_updates(5)
    model.train()
    model(source=torch.randn(1, 4000), padding_mask=None)["encoder_out"].pow(2).mean().backward()
    assert all(torch.count_nonzero(m.scores.grad) > 0 for m in score_masks(model, W2V_PREFIX).values())


@pytest.mark.parametrize("fields, message", [
    ({"score_sparsity": 0.0}, "model.score_sparsity=0.0: the fraction of weights removed must lie strictly between"),
    ({"score_sparsity": 1.0}, "model.score_sparsity=1.0: "),
    ({"score_sparsity": -0.1}, "model.score_sparsity=-0.1: "),
    ({"score_sparsity": 0.1, "score_init": "kaiming"}, "model.score_init=kaiming: choose one of ori, wmi, ri"),
    ({"score_sparsity": 0.1, "score_scope": "layer"}, "model.score_scope=layer: choose one of matrix, global"),
    ({"score_sparsity": 0.1, "score_targets": "fc3"}, "model.score_targets: unknown module kind 'fc3'"),
    ({"score_sparsity": 0.1, "score_layers": "1-4"}, "model.score_layers: layer 2 is selected but the model has 2"),
    ({"score_sparsity": 0.1, "freeze_encoder_epochs": 1}, "model.freeze_encoder_epochs=1 with learned masks"),
    ({"score_sparsity": 0.1, "language_mask_files": ["es:a.mask"]}, "model.score_sparsity with "
     "model.language_mask_files: a learned mask runs one top-k per matrix, and per-language masks hold one mask per "
     "language"),
    ({"score_sparsity": 0.1, "score_train_layer_norms": True, "freeze_finetune_updates": 5},
     "model.freeze_finetune_updates=5 with learned masks and trainable biases or layer norms"),
])
def test_bad_learned_mask_settings_are_refused_naming_the_key(fields, message):
    with pytest.raises(PluginInputError, match="^" + re.escape(message)):
        build(**fields)


def test_a_model_rebuilt_from_its_plan_takes_the_scores_from_the_state_without_initialising():
    settings = dict(score_sparsity=0.2, score_scope="global", score_targets="all")
    trained = build(**settings)
    with torch.no_grad():
        for member in score_masks(trained, W2V_PREFIX).values():
            member.scores.add_(torch.randn_like(member.scores))
    rebuilt = build(seed=7, transform_plan=trained.cfg.transform_plan, **settings)
    assert all(not member.scores.any() for member in score_masks(rebuilt, W2V_PREFIX).values())  # placeholders
    rebuilt.load_state_dict(trained.state_dict())
    trained.eval(), rebuilt.eval()
    source = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.equal(trained(source=source, padding_mask=None)["encoder_out"],
                           rebuilt(source=source, padding_mask=None)["encoder_out"])
    held, expected = masks_from_module(rebuilt, W2V_PREFIX), masks_from_module(trained, W2V_PREFIX)
    assert all(torch.equal(held[n], expected[n]) for n in expected)


def test_global_top_k_keeps_exactly_k_over_all_members_and_stores_each_share():
    members = {"a": ScoreMask(torch.tensor([0.1, 0.9, 0.5, 0.2]), 0.5, "global"),
               "b": ScoreMask(torch.tensor([0.3, 0.05, 0.8, 0.7]), 0.5, "global")}
    GlobalTopK(members).decide()
    assert [int(m.n_pruned) for m in members.values()] == [2, 2]
    with torch.no_grad():
        members["b"].scores.copy_(torch.tensor([0.01, 0.02, 0.03, 0.04]))
    for member in members.values():
        member.train()
    GlobalTopK(members).decide()
    assert [int(m.n_pruned) for m in members.values()] == [0, 4]
    assert members["a"].kept().all() and not members["b"].kept().any()
    assert torch.equal(members["a"](torch.ones(4)), torch.ones(4))


@pytest.mark.parametrize("arguments, message", [
    (["build", "es", "--out", "{tmp}/b.pt"], "bundle entry 'es': expected LANGUAGE=CHECKPOINT"),
    (["build", "es={tmp}/x.pt", "es={tmp}/y.pt", "--out", "{tmp}/b.pt"], "bundle names language 'es' twice"),
    (["build", "es={tmp}/none.pt", "--out", "{tmp}/b.pt"], "{tmp}/none.pt: no such checkpoint file"),
    (["list", "{tmp}/plain.pt"], "{tmp}/plain.pt: not a bundle"),
    (["add", "{tmp}/plain.pt", "es={tmp}/plain.pt"], "{tmp}/plain.pt: not a bundle"),
])
def test_bad_bundle_commands_fail_with_one_line_and_write_nothing(arguments, message, tmp_path, capsys):
    from factory import write_plugin_checkpoint
    from fairseq_subnets.cli.main import main as cli

    checkpoint, _, _ = write_plugin_checkpoint(tmp_path)
    checkpoint.rename(tmp_path / "plain.pt")
    before = sorted(tmp_path.iterdir())
    assert cli(["bundles", *[argument.format(tmp=tmp_path) for argument in arguments]]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fairseq-subnets bundles: error: {message.format(tmp=tmp_path)}"), line
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("name, lr, max_update, max_tokens", [
    ("learned_masks_tiny", 0.001, 600, 400000), ("learned_masks_xlsr_300m", 0.00005, 12000, 1280000)])
def test_shipped_learned_mask_configs_are_their_base_config_plus_the_learned_mask_settings(
        name, lr, max_update, max_tokens):
    """Composed as fairseq-hydra-train composes them; the XLS-R one follows Fu et al. Sec. 4.1
    (Adam at 5e-5, tri-stage, 12k updates, no encoder freeze)."""
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose, initialize_config_dir

    from fairseq_subnets import USER_DIR

    hydra_init(name)
    with initialize_config_dir(config_dir=f"{USER_DIR}/config/finetune", version_base="1.1"):
        cfg = compose(config_name=name)
    assert cfg.model._name == "subnets_wav2vec_ctc" and cfg.model.score_sparsity == 0.1
    assert (cfg.model.score_init, cfg.model.score_targets, cfg.model.score_scope) == ("ori", "ffn", "matrix")
    assert cfg.model.freeze_finetune_updates == 0
    assert list(cfg.optimization.lr) == [lr] and cfg.optimization.max_update == max_update
    assert cfg.optimizer._name == "adam" and cfg.lr_scheduler._name == "tri_stage"
    assert cfg.dataset.max_tokens == max_tokens and cfg.task._name == "subnets_audio_finetuning"
