"""Starting from a fine-tuned checkpoint (`model.init_from`, plugin.formats.upstream) when either side is
multilingual: a single-language run continues one language of a multilingual (pathways) model,
with that language's head and masks; a multilingual run takes each language's head; output layers
are kept exactly when the dictionaries match; and the combinations that cannot work are refused
naming the checkpoint and the key."""
import types

import pytest
import torch
from omegaconf import OmegaConf

from fairseq_subnets.core.transforms import add_transform
from fairseq_subnets.techniques.pathways.layer import LanguageMasks
from fairseq_subnets.plugin.formats.upstream import (
    LANGUAGE_DICTIONARIES_KEY, SINGLE, OutputLayer, UpstreamCheckpointError, continued_state, read_upstream,
)
from test_multilingual_heads import build, multilingual_task

FC1 = "w2v_encoder.w2v_model.encoder.layers.0.fc1"
SYMBOLS = {"es": tuple(f"es{i}" for i in range(10)), "ca": tuple(f"ca{i}" for i in range(12))}


@pytest.fixture(scope="module")
def pathways_checkpoint():
    """A multilingual model with per-language masks on one matrix, saved as fairseq saves it,
    with the per-language dictionaries the multilingual task records."""
    model = build(multilingual_task())
    generator = torch.Generator().manual_seed(0)
    fc1 = model.get_submodule(FC1)
    add_transform(fc1, "pathways", LanguageMasks({language: torch.rand(fc1.weight.shape, generator=generator) < 0.5
                                                  for language in ("es", "ca")}))
    dictionaries = {language: list(symbols) for language, symbols in SYMBOLS.items()}
    return {"cfg": {"model": OmegaConf.to_container(model.cfg)}, "model": model.state_dict(),
            "task_state": {LANGUAGE_DICTIONARIES_KEY: dictionaries}}


def test_a_single_language_run_continues_one_language_with_its_head_and_masks(pathways_checkpoint):
    upstream = read_upstream(pathways_checkpoint, "up.pt", "ca", multilingual_run=False)
    state = pathways_checkpoint["model"]
    mask = state[f"{FC1}.parametrizations.weight.0.language_masks.pathways.ca"]
    original = state[f"{FC1}.parametrizations.weight.original"]
    assert torch.equal(upstream.state[f"{FC1}.weight"], torch.where(mask, original, 0.0))
    assert torch.equal(upstream.state["w2v_encoder.proj.weight"], state["language_heads.ca.weight"])
    assert not any(key.startswith("language_heads.") for key in upstream.state)
    assert upstream.output_layers == {SINGLE: OutputLayer("w2v_encoder.proj.", SYMBOLS["ca"])}


def test_a_multilingual_run_takes_each_languages_head_from_the_same_language(pathways_checkpoint):
    unmasked = {**pathways_checkpoint, "model": {
        key: value for key, value in pathways_checkpoint["model"].items() if ".parametrizations." not in key}}
    unmasked["model"][f"{FC1}.weight"] = pathways_checkpoint["model"][f"{FC1}.parametrizations.weight.original"]
    upstream = read_upstream(unmasked, "up.pt", None, multilingual_run=True)
    assert upstream.output_layers == {language: OutputLayer(f"language_heads.{language}.", symbols)
                                      for language, symbols in SYMBOLS.items()}
    assert upstream.output_layer_for("ast") is None


REFUSED = {  # (language, multilingual run): what the error says
    (None, False): "model.init_from: up.pt is a multilingual model \\(es, ca\\); name the language this "
                   "single-language run continues with \\+model.init_from_language",
    ("pl", False): "model.init_from_language: up.pt: language 'pl' is not one of the checkpoint's languages "
                   "\\(es, ca\\)",
    ("ca", True): "model.init_from_language=ca: this run is multilingual and takes every language",
    (None, True): "model.init_from: up.pt: .*per-language masks.*a multilingual run cannot start from them",
}


@pytest.mark.parametrize("language, multilingual_run", sorted(REFUSED, key=str))
def test_combinations_that_cannot_work_are_refused_naming_the_file_and_key(pathways_checkpoint, language,
                                                                           multilingual_run):
    with pytest.raises(UpstreamCheckpointError, match=REFUSED[language, multilingual_run]):
        read_upstream(pathways_checkpoint, "up.pt", language, multilingual_run)


def test_a_single_language_checkpoint_refuses_init_from_language():
    single = build(types.SimpleNamespace(target_dictionary=range(5)))
    checkpoint = {"cfg": {"model": OmegaConf.to_container(single.cfg)}, "model": single.state_dict(), "task_state": {}}
    with pytest.raises(UpstreamCheckpointError, match="init_from_language=es: up.pt is a single-language model"):
        read_upstream(checkpoint, "up.pt", "es", multilingual_run=False)
    assert read_upstream(checkpoint, "up.pt", None, multilingual_run=True).output_layer_for("es") == OutputLayer(
        "w2v_encoder.proj.", None)


def layers_state():
    """A state of two heads and one encoder weight; the upstream state differs in every tensor."""
    return {"w2v_encoder.w2v_model.encoder.w": torch.zeros(2), "language_heads.es.weight": torch.zeros(3),
            "language_heads.ca.weight": torch.zeros(4)}


def upstream_of(symbols_es, symbols_ca=None):
    from fairseq_subnets.plugin.formats.upstream import Upstream

    state = {key: torch.ones_like(value) for key, value in layers_state().items()}
    layers = {"es": OutputLayer("language_heads.es.", symbols_es)}
    if symbols_ca is not None:
        layers["ca"] = OutputLayer("language_heads.ca.", symbols_ca)
    return Upstream("up.pt", state, layers)


OWN_LAYERS = {"es": OutputLayer("language_heads.es.", ("a", "b")), "ca": OutputLayer("language_heads.ca.", ("c",))}


def test_auto_keeps_exactly_the_output_layers_whose_dictionary_matches():
    state, kept = continued_state(layers_state(), OWN_LAYERS, upstream_of(("a", "b"), ("other",)), "auto")
    assert kept == ["es"]
    assert state["w2v_encoder.w2v_model.encoder.w"].eq(1).all() and state["language_heads.es.weight"].eq(1).all()
    assert state["language_heads.ca.weight"].eq(0).all()
    state, kept = continued_state(layers_state(), OWN_LAYERS, upstream_of(("a", "b")), "new")
    assert kept == [] and state["language_heads.es.weight"].eq(0).all()


def test_keep_needs_an_upstream_layer_and_auto_a_recorded_dictionary():
    with pytest.raises(UpstreamCheckpointError, match="up.pt: has no output layer for language 'ca'"):
        continued_state(layers_state(), OWN_LAYERS, upstream_of(("a", "b")), "keep")
    with pytest.raises(UpstreamCheckpointError, match="holds no target dictionary"):
        continued_state(layers_state(), OWN_LAYERS, upstream_of(None), "auto")
    with pytest.raises(UpstreamCheckpointError, match="language_heads.ca.weight has shape \\(4,\\), this model's "
                                                      "language_heads.ca.weight \\(5,\\)"):
        continued_state({**layers_state(), "language_heads.ca.weight": torch.zeros(5)}, OWN_LAYERS,
                        upstream_of(("a", "b"), ("c",)), "keep")


def test_a_single_language_run_continues_one_language_of_a_bundle_under_its_masks(tmp_path):
    """A bundle stores each language's masks as an embedded mask file and its dictionaries in its
    record (plugin.formats.bundles); the language continued is that language's own run: its
    masked weights, its head, and its dictionary, which `auto` compares."""
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.core.parametrize import masks_from_state_dict
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint
    from fairseq_subnets.techniques.extension import W2V_PREFIX
    from test_bundle_files import write_language_runs

    assert cli(["bundles", "build", *write_language_runs(tmp_path), "--out", str(tmp_path / "bundle.pt")]) == 0
    bundle = load_checkpoint(str(tmp_path / "bundle.pt"))
    upstream = read_upstream(bundle, "bundle.pt", "es", multilingual_run=False)
    own = load_checkpoint(str(tmp_path / "es.pt"))
    masks = masks_from_state_dict(own["model"], prefix=W2V_PREFIX)
    assert masks
    for name, mask in masks.items():
        module = W2V_PREFIX + name[: -len(".weight")]
        original = bundle["model"][f"{module}.parametrizations.weight.original"]
        assert torch.equal(upstream.state[W2V_PREFIX + name], torch.where(mask, original, 0.0)), name
    assert torch.equal(upstream.state["w2v_encoder.proj.weight"], own["model"]["w2v_encoder.proj.weight"])
    assert upstream.output_layers == {
        SINGLE: OutputLayer("w2v_encoder.proj.", tuple(own["task_state"]["target_dictionary"].symbols))}
