"""Per-language output layers of `subnets_wav2vec_ctc`: built from the task's layout, recorded in
the model config, rebuilt from that config alone, selected by the batch's language (heads and
per-language encoder masks), and converted to a stock single-language model."""
import types

import pytest
import torch

from factory import TINY

LAYOUT = (["es", "ca"], "per_language", [10, 12])


def multilingual_task(layout=LAYOUT):
    """What the model reads from subnets_multilingual_finetuning at build time."""
    return types.SimpleNamespace(target_dictionary=range(layout[2][0]), output_layout=lambda: layout)


def build(task, cfg=None, seed=0):
    """A TINY model built as fairseq builds it for `task` (from a fresh config, or from `cfg`)."""
    from omegaconf import OmegaConf

    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, ctc_model_config

    torch.manual_seed(seed)
    return SubnetsWav2VecCtc.build_model(cfg or OmegaConf.structured(ctc_model_config(CtcModelSize(**TINY))), task)


def heads_of(model):
    """The language_heads technique on `model` (None when it is off)."""
    from fairseq_subnets.techniques.extension import technique_of
    from fairseq_subnets.techniques.language_heads import LanguageHeads

    return technique_of(model, LanguageHeads)


def audio(seed=1, batch=2, samples=4000):
    generator = torch.Generator().manual_seed(seed)
    return {"source": torch.randn(batch, samples, generator=generator),
            "padding_mask": torch.zeros(batch, samples, dtype=torch.bool)}


@pytest.fixture(scope="module")
def model():
    return build(multilingual_task()).eval()


def test_one_head_per_language_sized_by_its_dictionary_and_no_stock_output_layer(model):
    state = model.state_dict()
    assert state["language_heads.es.weight"].shape == (10, TINY["width"])
    assert state["language_heads.ca.weight"].shape == (12, TINY["width"])
    assert not any(key.startswith("w2v_encoder.proj.") for key in state)
    assert list(model.cfg.languages) == ["es", "ca"]
    assert model.cfg.language_output_layers == "per_language"
    assert list(model.cfg.language_output_sizes) == [10, 12]


def test_the_batch_language_picks_the_head(model):
    with torch.no_grad():
        es = model(**audio(), language="es")["encoder_out"]
        ca = model(**audio(), language="ca")["encoder_out"]
        again = model(**audio())["encoder_out"]  # no language: the last selected one
    assert es.shape[-1] == 10 and ca.shape[-1] == 12
    assert heads_of(model).active_language == "ca" and torch.equal(again, ca)


def test_unknown_language_and_missing_selection_are_refused(model):
    from fairseq_subnets.techniques.language_heads import UnknownLanguageError

    with pytest.raises(UnknownLanguageError, match="'en' is not one of this model's languages \\(es, ca\\)"):
        model(**audio(), language="en")
    fresh = build(multilingual_task())
    with pytest.raises(UnknownLanguageError, match="pass net_input\\['language'\\]"):
        fresh(**audio())


def test_selecting_a_language_switches_the_per_language_encoder_masks():
    from fairseq_subnets.core.transforms import add_transform
    from fairseq_subnets.techniques.pathways.layer import LanguageMasks

    multilingual = build(multilingual_task()).eval()
    fc1 = multilingual.get_submodule("w2v_encoder.w2v_model.encoder.layers.0.fc1")
    generator = torch.Generator().manual_seed(0)
    masks = LanguageMasks({language: torch.rand(fc1.weight.shape, generator=generator) < 0.5 for language in ("es", "ca")})
    add_transform(fc1, "pathways", masks)
    with torch.no_grad():
        multilingual(**audio(), language="ca")
        assert masks.active == "ca" and not fc1.weight[~masks.ca].any() and fc1.weight[masks.ca].any()
        multilingual(**audio(), language="es")
        assert masks.active == "es" and not fc1.weight[~masks.es].any()


def test_rebuilt_from_its_recorded_config_alone_it_gives_the_same_outputs(model):
    task_without_languages = types.SimpleNamespace(target_dictionary=range(3))
    rebuilt = build(task_without_languages, cfg=model.cfg, seed=5).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for language in ("es", "ca"):
            assert torch.equal(rebuilt(**audio(), language=language)["encoder_out"],
                               model(**audio(), language=language)["encoder_out"])


def test_a_model_for_a_task_without_languages_is_the_single_language_model():
    single = build(types.SimpleNamespace(target_dictionary=range(7)))
    assert single.cfg.languages is None and heads_of(single) is None and not single.languages
    assert single.state_dict()["w2v_encoder.proj.weight"].shape == (7, TINY["width"])


def test_shared_mode_keeps_the_stock_output_layer_over_the_union():
    shared = build(multilingual_task((["es", "ca"], "shared", [15])))
    assert shared.state_dict()["w2v_encoder.proj.weight"].shape == (15, TINY["width"])
    assert not hasattr(shared, "language_heads") and list(shared.cfg.languages) == ["es", "ca"]
    assert shared.languages == ["es", "ca"]


def test_one_language_converts_to_a_stock_wav2vec_ctc_with_identical_outputs(model):
    from omegaconf import OmegaConf

    from fairseq_subnets.techniques.language_heads import MULTILINGUAL_MODEL_KEYS, single_language_state
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, build_untrained_ctc_model

    state, cfg = single_language_state(model.state_dict(), OmegaConf.to_container(model.cfg), "ca")
    assert torch.equal(state["w2v_encoder.proj.weight"], model.state_dict()["language_heads.ca.weight"])
    assert not any(key.startswith("language_heads.") for key in state)
    assert not set(MULTILINGUAL_MODEL_KEYS) & set(cfg)
    stock = build_untrained_ctc_model(CtcModelSize(vocab=12, **TINY), stock=True).eval()
    stock.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(stock(**audio())["encoder_out"], model(**audio(), language="ca")["encoder_out"])


def test_conversion_refuses_a_language_the_checkpoint_does_not_have(model):
    from fairseq_subnets.techniques.language_heads import UnknownLanguageError, single_language_state

    with pytest.raises(UnknownLanguageError, match="'ast' is not one of the checkpoint's languages \\(es, ca\\)"):
        single_language_state(model.state_dict(), model.cfg, "ast")
