"""A bad mask file is refused before the upstream model is loaded (Technique.check_files), and so
are a damaged bundle or an adapter file given where a checkpoint goes (`model.init_from`, or
fairseq-generate's `--path`).

Loading `model.w2v_path` takes about 30 s at XLS-R size (the rehearsal benchmark prints how soon a
damaged mask is refused at that shape). Here each run is built in this process as
fairseq-hydra-train builds it (test_bad_inputs_training), with fairseq's loader of the upstream
model replaced by one that fails the test: the mask file must be refused first, with the message
the catalogue documents. The same runs with good masks do load the upstream model, so the
replacement is on the real path.
"""
import pytest

from test_bad_inputs_training import (  # noqa: F401  (inputs: a fixture)
    RUN_CASES, TRAIN_ERROR, RunCase, built_as_fairseq_hydra_train_builds, inputs, placeholders, substituted,
    training_arguments,
)


class UpstreamLoaded(Exception):
    """fairseq started to load the upstream model."""


@pytest.fixture
def upstream_load_refused(monkeypatch):
    from fairseq import checkpoint_utils

    def refuse(path, *args, **kwargs):
        raise UpstreamLoaded(path)

    monkeypatch.setattr(checkpoint_utils, "load_checkpoint_to_cpu", refuse)


@pytest.fixture(scope="module")
def tiny_masks(inputs):
    """<INPUTS>/es.mask and <INPUTS>/ca.mask, masks of the TINY encoder's FFN matrices."""
    from factory import TINY, random_encoder_masks
    from fairseq_subnets.core.maskfile import save_mask_file

    for seed, language in enumerate(("es", "ca")):
        masks = {name: mask for name, mask in random_encoder_masks(0.5, seed=seed, **TINY).items() if ".fc" in name}
        save_mask_file(str(inputs / f"{language}.mask"), masks)
    return inputs


def build(inputs, tmp_path, config_name, *overrides):
    arguments = training_arguments(RunCase("", "", ("model.w2v_path=<PRETRAINED>", *overrides)),
                                   placeholders(inputs), tmp_path / "run")
    return built_as_fairseq_hydra_train_builds(arguments, config_name)


MULTILINGUAL = ("task.data=<INPUTS>/corpus", "task.languages=[es,ca]")


@pytest.mark.parametrize("config_name, overrides, message", [
    ("tiny", ("+model.mask_path=<DEEP_MASK>",), "model.mask_path: <DEEP_MASK>: mask for encoder.layers.2."),
    ("tiny", ("+model.mask_path=<INPUTS>/notes.txt",), "model.mask_path: <INPUTS>/notes.txt: not a readable mask file"),
    ("multilingual_tiny", (*MULTILINGUAL, "+model.language_mask_files=[es:<INPUTS>/es.mask,ca:<DEEP_MASK>]"),
     "<DEEP_MASK>: mask for encoder.layers.2."),
    ("multilingual_tiny", (*MULTILINGUAL, "+model.language_mask_files=[es:<INPUTS>/es.mask]"),
     "model.language_mask_files has masks for es; the task trains es, ca"),
], ids=["mask-deeper-model", "mask-not-a-mask", "language-mask-deeper-model", "language-mask-missing"])
def test_a_bad_mask_file_is_refused_before_the_upstream_model_loads(config_name, overrides, message, tiny_masks,
                                                                    tmp_path, upstream_load_refused):
    stage, error = build(tiny_masks, tmp_path, config_name, *overrides)
    expected = message
    for placeholder, path in placeholders(tiny_masks).items():
        expected = expected.replace(placeholder, path)
    assert stage == "model" and not isinstance(error, UpstreamLoaded), f"{stage}: {error!r}"
    assert str(error).startswith(expected), str(error)


@pytest.mark.parametrize("config_name, overrides", [
    ("tiny", ("+model.mask_path=<INPUTS>/es.mask", "+model.mask_targets=ffn")),
    ("multilingual_tiny", (*MULTILINGUAL, "+model.language_mask_files=[es:<INPUTS>/es.mask,ca:<INPUTS>/ca.mask]")),
], ids=["mask", "language-masks"])
def test_good_mask_files_pass_the_early_check_and_the_upstream_model_then_loads(config_name, overrides, tiny_masks,
                                                                                tmp_path, upstream_load_refused):
    stage, error = build(tiny_masks, tmp_path, config_name, *overrides)
    assert (stage, type(error)) == ("model", UpstreamLoaded), f"{stage}: {error!r}"


@pytest.fixture
def model_build_refused(monkeypatch):
    """fairseq's CTC model build, which a run from `model.init_from` fills with that checkpoint's
    weights, fails the test."""
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2VecCtc

    def refuse(cls, cfg, task):
        raise UpstreamLoaded("the model was built")

    monkeypatch.setattr(Wav2VecCtc, "build_model", classmethod(refuse))


def catalogue_message(case_id, inputs):
    """The headline of a training case of the catalogue (what follows `fairseq-hydra-train: error: `)."""
    message = next(case.message for case in RUN_CASES if case.id == case_id)
    return substituted(message[len(TRAIN_ERROR):], placeholders(inputs))


@pytest.mark.parametrize("case_id", ["train-init-from-damaged-bundle", "train-init-from-adapter"])
def test_a_damaged_bundle_or_an_adapter_file_as_init_from_is_refused_before_the_model_is_built(
        case_id, inputs, tmp_path, model_build_refused):
    case = next(case for case in RUN_CASES if case.id == case_id)
    stage, error = build(inputs, tmp_path, "tiny", *case.argv[1:])
    assert stage == "model" and not isinstance(error, UpstreamLoaded), f"{stage}: {error!r}"
    assert str(error).startswith(catalogue_message(case_id, inputs)), str(error)


def test_a_good_bundle_as_init_from_passes_the_early_check_and_the_model_is_then_built(inputs, tmp_path,
                                                                                       model_build_refused):
    stage, error = build(inputs, tmp_path, "tiny", f"+model.init_from={inputs / 'bundle-sources' / 'bundle.pt'}",
                         "+model.init_from_language=es")
    assert (stage, type(error)) == ("model", UpstreamLoaded), f"{stage}: {error!r}"


@pytest.mark.parametrize("decoded, refusal", [
    ("bundle-damaged.pt", "damaged bundle (checksum mismatch"),
    ("lora.adapter", "is an adapter file, not a checkpoint"),
    ("bundle-sources/bundle.pt", None),
], ids=["damaged-bundle", "adapter-file", "good-bundle"])
def test_the_checkpoints_to_decode_are_checked_when_the_task_is_set_up(decoded, refusal, inputs, tmp_path,
                                                                       upstream_load_refused):
    """fairseq-generate sets its task up from the config that names `--path` (common_eval.path)
    before it reads the checkpoint: a damaged bundle or an adapter file is refused there, naming
    it; a good bundle passes (the run built here then goes on to load model.w2v_path)."""
    stage, error = build(inputs, tmp_path, "tiny", f"common_eval.path={inputs / decoded}")
    if refusal is None:
        assert (stage, type(error)) == ("model", UpstreamLoaded), f"{stage}: {error!r}"
    else:
        assert stage == "task" and str(error).startswith(f"{inputs / decoded}") and refusal in str(error), error
