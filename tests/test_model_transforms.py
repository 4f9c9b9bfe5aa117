"""`subnets_wav2vec_ctc` is rebuilt from its config: the transforms it holds are recorded in
`model.transform_plan`, fairseq's own checkpoint loader (what fairseq-generate and resume use)
recreates them, and the checkpoint fills their state, learned scores included; checkpoints of
0.2 (no plan, old key names) still load. The `subnets_ctc` criterion adds, logs and switches off
the regularisation terms that modules contribute."""
import json
import types

import pytest
import torch
from omegaconf import OmegaConf

from factory import TINY, random_encoder_masks, write_plugin_checkpoint
from fairseq_subnets.core.maskfile import save_mask_file
from fairseq_subnets.core.parametrize import mask_state_digest
from fairseq_subnets.core.transforms import select_language
from fairseq_subnets.techniques.learned_masks.layer import apply_score_masks
from fairseq_subnets.techniques.pathways.layer import apply_language_masks
from fairseq_subnets.plugin.components.criterions import (
    RegulariserConfigError, SubnetsCtcCriterion, SubnetsCtcCriterionConfig,
)
from fairseq_subnets.plugin.components.models import W2V_PREFIX, SubnetsWav2VecCtc
from fairseq_subnets.benchmarks.untrained import CtcModelSize, ctc_model_config

SIZE = CtcModelSize(vocab=32, **TINY)
FFN = [f"encoder.layers.{layer}.{kind}.weight" for layer in range(TINY["layers"]) for kind in ("fc1", "fc2")]
ATTENTION_V = [f"encoder.layers.{layer}.self_attn.v_proj.weight" for layer in range(TINY["layers"])]


def build(cfg, seed=0, vocab=SIZE.vocab):
    torch.manual_seed(seed)
    return SubnetsWav2VecCtc.build_model(cfg, types.SimpleNamespace(target_dictionary=range(vocab)))


def effective(model, names):
    return {name: model.get_submodule(W2V_PREFIX + name[: -len(".weight")]).weight.detach().clone()
            for name in names}


def config_with_mask_file(tmp_path, masks, **fields):
    """The TINY model config with `masks` written to a mask file named in `mask_path`."""
    mask_path = tmp_path / "mask.safetensors"
    save_mask_file(str(mask_path), masks, {"method": "random"})
    cfg = ctc_model_config(SIZE)
    cfg.mask_path = str(mask_path)
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def model_with_every_mask_kind(tmp_path):
    """A fixed mask from mask_path on attention q/k/out, learned scores on the FFN, per-language
    masks on v; the scores then move as training would move them."""
    cfg = config_with_mask_file(tmp_path, random_encoder_masks(0.6, seed=1, **TINY), mask_targets="q,k,out")
    model = build(cfg)
    apply_score_masks(model, {name: torch.rand(*model.encoder_weight_shapes()[name]) for name in FFN}, 0.1,
                      prefix=W2V_PREFIX, name="s3router")
    language_masks = {language: random_encoder_masks(0.3, seed=seed, **TINY) for seed, language in
                      enumerate(("es", "ca"))}
    apply_language_masks(model, {language: {name: masks[name] for name in ATTENTION_V}
                                 for language, masks in language_masks.items()}, prefix=W2V_PREFIX, name="pathways")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    model.record_transform_plan(cfg)
    select_language(model, "ca")
    return model, cfg


def test_the_config_records_every_transform_and_a_rebuild_recreates_them(tmp_path):
    trained, cfg = model_with_every_mask_kind(tmp_path)
    plan = json.loads(cfg.transform_plan)
    assert sorted((entry["kind"], entry["name"], len(entry["weights"])) for entry in plan) == [
        ("fixed_mask", "default", 3 * TINY["layers"]), ("language_masks", "pathways", TINY["layers"]),
        ("score_mask", "s3router", 2 * TINY["layers"])]
    assert next(e for e in plan if e["kind"] == "language_masks")["options"] == {"languages": ["es", "ca"]}

    rebuilt_cfg = OmegaConf.merge(cfg, {"mask_path": None})  # a checkpoint rebuild reads no mask file
    rebuilt = build(rebuilt_cfg, seed=5)
    rebuilt.load_state_dict(trained.state_dict())
    select_language(rebuilt, "ca")
    names = list(trained.encoder_weight_shapes())
    ours, theirs = effective(rebuilt, names), effective(trained, names)
    assert all(torch.equal(ours[name], theirs[name]) for name in names)
    assert rebuilt.mask_digest() == trained.mask_digest() != ""


def test_fairseqs_checkpoint_loader_rebuilds_learned_scores_from_the_plan(tmp_path):
    """What fairseq-generate and `load_model_ensemble_and_task` do: build from the saved cfg, load."""
    from fairseq import checkpoint_utils

    path, _, _ = write_plugin_checkpoint(tmp_path)
    trained, cfg = model_with_every_mask_kind(tmp_path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["cfg"]["model"] = {**checkpoint["cfg"]["model"], "transform_plan": cfg.transform_plan,
                                  "mask_path": cfg.mask_path}
    checkpoint["model"] = trained.state_dict()
    torch.save(checkpoint, path)

    (loaded,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    select_language(loaded, "ca")
    names = list(trained.encoder_weight_shapes())
    ours, theirs = effective(loaded, names), effective(trained, names)
    assert all(torch.equal(ours[name], theirs[name]) for name in names)
    assert mask_state_digest(loaded, W2V_PREFIX) == mask_state_digest(trained, W2V_PREFIX)


def test_a_checkpoint_of_version_0_2_still_loads(tmp_path):
    from fairseq import checkpoint_utils

    path, saved, masks = write_plugin_checkpoint(tmp_path, sparsity=0.7)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["cfg"]["model"].pop("transform_plan", None)
    checkpoint["model"] = {key.replace(".weight.0.fixed_mask.default.mask", ".weight.0.mask"): value
                           for key, value in checkpoint["model"].items()}
    assert any(key.endswith("parametrizations.weight.0.mask") for key in checkpoint["model"])
    torch.save(checkpoint, path)
    (loaded,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    ours, theirs = effective(loaded, masks), effective(saved, masks)
    assert all(torch.equal(ours[name], theirs[name]) for name in masks)
    assert all(torch.count_nonzero(ours[name][~mask]) == 0 for name, mask in masks.items())


def test_dense_storage_from_the_config_keeps_full_weights_under_the_mask(tmp_path):
    masks = random_encoder_masks(0.8, seed=2, **TINY)
    cfg = config_with_mask_file(tmp_path, masks, mask_storage="dense")
    model = build(cfg)
    assert {entry["kind"] for entry in json.loads(cfg.transform_plan)} == {"dense_mask"}
    name = "encoder.layers.1.fc2.weight"
    original = model.get_submodule(W2V_PREFIX + "encoder.layers.1.fc2").parametrizations.weight.original
    assert original.shape == masks[name].shape
    assert torch.count_nonzero(effective(model, [name])[name][~masks[name]]) == 0


class ContributesATerm(torch.nn.Module):
    """A module contributing `test_norm` = ||p||^2 and counting how often it was computed."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        self.computed = 0

    def regularisation_term_names(self):
        return ("test_norm",)

    def regularisation_term(self, name):
        self.computed += 1
        return self.p.pow(2).sum()


def criterion_and_batch(weights):
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for letter in "|abc":
        dictionary.add_symbol(letter)
    task = types.SimpleNamespace(target_dictionary=dictionary)
    cfg = OmegaConf.structured(SubnetsCtcCriterionConfig(regulariser_weights=weights, sentence_avg=True))
    torch.manual_seed(0)
    sample = {"net_input": {"source": torch.randn(2, 8000), "padding_mask": torch.zeros(2, 8000, dtype=torch.bool)},
              "target": torch.tensor([[5, 6, 7], [6, 5, dictionary.pad()]]),
              "target_lengths": torch.tensor([3, 2]), "ntokens": 5, "id": torch.tensor([0, 1])}
    return SubnetsCtcCriterion(cfg, task), sample, len(dictionary)


@pytest.mark.parametrize("weights", [None, "test_norm:0.5", "test_norm:0"])
def test_the_criterion_adds_logs_and_switches_off_regularisation_terms(weights):
    criterion, sample, vocab = criterion_and_batch(weights)
    model = build(ctc_model_config(CtcModelSize(vocab=vocab, **TINY)), seed=1, vocab=vocab)
    model.contributor = ContributesATerm()
    model.train()
    torch.manual_seed(2)  # the same time masks in both passes
    plain_loss, sample_size, _ = super(SubnetsCtcCriterion, criterion).forward(model, sample)
    torch.manual_seed(2)
    loss, _, logged = criterion.forward(model, sample)
    weight = {None: 1.0, "test_norm:0.5": 0.5, "test_norm:0": 0.0}[weights]
    assert torch.allclose(loss - plain_loss, torch.tensor(weight * sample_size * 25.0), rtol=1e-4)
    if weight:
        assert logged["regulariser_test_norm"] == 25.0 and model.contributor.computed == 1
        loss.backward()
        assert torch.allclose(model.contributor.p.grad, weight * sample_size * 2 * torch.tensor([3.0, 4.0]))
    else:
        assert "regulariser_test_norm" not in logged and model.contributor.computed == 0
    model.eval()
    with torch.no_grad():
        _, _, logged = criterion.forward(model, sample)
    assert "regulariser_test_norm" not in logged


def test_unknown_or_malformed_regulariser_weights_are_refused():
    criterion, sample, vocab = criterion_and_batch("group_lasso:1e-4")
    model = build(ctc_model_config(CtcModelSize(vocab=vocab, **TINY)), vocab=vocab).train()
    with pytest.raises(RegulariserConfigError, match="names group_lasso, which no module of the model contributes"):
        criterion.forward(model, sample)
    for bad in ("group_lasso", "group_lasso:-1", "group_lasso:fast", ":1"):
        with pytest.raises(RegulariserConfigError, match="criterion.regulariser_weights: .* is not name:weight"):
            criterion_and_batch(bad)
