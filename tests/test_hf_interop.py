"""HF transformers export and import (fairseq_subnets.interop.hf) on real models of three shapes.

Each shape is a random fairseq model (every parameter, norms and biases included, moved off its
initial value, so a swapped or misnamed tensor shows): tiny (BASE's architecture: group norm in the
first convolution, post-norm layers), BASE (its widths and 12 layers) and XLS-R (its widths,
layer-norm feature extractor with conv biases, pre-norm layers and normalized input, but 2 of its
24 layers, to keep the test cheap). For each: the HF folder loads offline in Wav2Vec2ForCTC and
Wav2Vec2Processor, its logits are within 1e-4 of fairseq's on the same input with the same greedy
path, and the round trip fairseq -> HF -> fairseq gives the stock export's weights bit for bit.
The trained tiny model of the skeleton run is compared over its test set, and its pretrained model,
through HF and back, starts a real fine-tuning run.
"""
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from factory import LETTERS
from fairseq_subnets.techniques.tuners import TUNERS

SHAPES = {
    "tiny": (dict(layers=2, width=64, ffn=128), False, False),
    "base": (dict(layers=12, width=768, ffn=3072), False, False),
    "xlsr": (dict(layers=2, width=1024, ffn=4096, heads=16), True, True),
}
"""name -> (encoder size, XLS-R's architecture, normalized input)."""
TOLERANCE = 1e-4
TUNER_SETTINGS = {"adalora": {"tuner_total_updates": 100}}
"""What a tuner needs set beyond its name."""


def dictionary_of(letters=LETTERS):
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for letter in letters:
        dictionary.add_symbol(letter)
    return dictionary


def perturbed(model, seed=0):
    """`model` with every parameter moved off its initial value (norm weights away from 1, biases
    away from 0), reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def model_config(size, xlsr, normalize, pretraining=False):
    from fairseq_subnets.benchmarks.untrained import XLSR_ARCHITECTURE, CtcModelSize, ctc_model_config, wav2vec2_model_config

    size = CtcModelSize(**size)
    architecture = XLSR_ARCHITECTURE if xlsr else {}
    if pretraining:
        return wav2vec2_model_config(size, quantize_targets=True, **architecture)
    cfg = ctc_model_config(size)
    cfg.w2v_args.model = wav2vec2_model_config(size, **architecture)
    cfg.w2v_args.task.normalize = cfg.normalize = normalize
    cfg._name = "subnets_wav2vec_ctc"
    return cfg


def write_checkpoint(directory: Path, shape: str, pretraining=False, settings=None):
    """A random model of `shape` saved as fairseq's trainer saves it (a CTC model with its
    Dictionary in the task state); returns (path, model in eval mode). `shape` names one of SHAPES,
    or any other shape whose `settings` (as SHAPES holds them) are given."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model
    from omegaconf import OmegaConf

    from fairseq_subnets.plugin.formats.checkpoints import trainer_checkpoint
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc

    size, xlsr, normalize = settings or SHAPES[shape]
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.model = model_config(size, xlsr, normalize, pretraining)
    torch.manual_seed(0)
    path = directory / f"{shape}.pt"
    if pretraining:
        cfg.task = {"_name": "audio_pretraining", "data": str(directory), "normalize": normalize}
        model = perturbed(Wav2Vec2Model.build_model(cfg.model))
        torch.save(trainer_checkpoint(cfg, model.state_dict(), "Wav2vecCriterion"), path)
        return path, model
    dictionary = dictionary_of()
    cfg.task = {"_name": "subnets_audio_finetuning", "data": str(directory), "labels": "ltr", "normalize": normalize}
    model = perturbed(SubnetsWav2VecCtc.build_model(cfg.model, types.SimpleNamespace(target_dictionary=dictionary)))
    torch.save(trainer_checkpoint(cfg, model.state_dict(), "SubnetsCtcCriterion",
                                  task_state={"target_dictionary": dictionary}), path)
    return path, model


def audio(normalize, seconds=1.0, seed=1):
    """One utterance as fairseq's dataset hands it to the model (layer-normalized when the task
    normalizes); both models get exactly this tensor."""
    generator = torch.Generator().manual_seed(seed)
    wave = 0.1 * torch.randn(1, int(16000 * seconds), generator=generator)
    return torch.nn.functional.layer_norm(wave, wave.shape) if normalize else wave


def greedy_path(logits):
    """Best path of one utterance's logits: argmax, repeats collapsed, blanks (index 0) dropped."""
    ids = torch.unique_consecutive(logits.argmax(-1))
    return ids[ids != 0].tolist()


def export(checkpoint, out, *options):
    from fairseq_subnets.cli.main import main

    assert main(["export", str(checkpoint), "--format", "hf", "--out", str(out), *options]) == 0


def stock_state(checkpoint):
    from fairseq_subnets.plugin.formats.checkpoints import load_fairseq_checkpoint
    from fairseq_subnets.plugin.tools.export import plain_checkpoint

    return plain_checkpoint(load_fairseq_checkpoint(checkpoint), checkpoint)["model"]


def exported_shape(tmp_path_factory, shape):
    """(shape, fairseq checkpoint, fairseq model, HF folder) of a random CTC model of `shape`."""
    directory = tmp_path_factory.mktemp(shape)
    path, model = write_checkpoint(directory, shape)
    export(path, directory / "hf")
    return shape, path, model, directory / "hf"


@pytest.fixture(scope="module", params=list(SHAPES))
def exported(request, tmp_path_factory):
    return exported_shape(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def tiny_exported(tmp_path_factory):
    return exported_shape(tmp_path_factory, "tiny")


def test_the_hf_folder_loads_offline_and_computes_what_fairseq_computes(exported, monkeypatch):
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shape, _, model, folder = exported
    _, xlsr, normalize = SHAPES[shape]
    hf = Wav2Vec2ForCTC.from_pretrained(folder).eval()
    processor = Wav2Vec2Processor.from_pretrained(folder)
    assert processor.feature_extractor.do_normalize is normalize
    assert processor.feature_extractor.return_attention_mask is xlsr
    assert hf.config.feat_extract_norm == ("layer" if xlsr else "group")
    assert hf.config.do_stable_layer_norm is xlsr and hf.config.conv_bias is xlsr
    source = audio(normalize)
    with torch.no_grad():
        fairseq_logits = model.get_logits(model(source=source, padding_mask=None)).transpose(0, 1)
        hf_logits = hf(source).logits
    assert hf_logits.shape == fairseq_logits.shape
    assert fairseq_logits.abs().max() > 1.0  # a model that computes something, not zeros
    assert (hf_logits - fairseq_logits).abs().max() <= TOLERANCE
    assert greedy_path(hf_logits[0]) == greedy_path(fairseq_logits[0])


def test_the_vocabulary_names_the_ctc_blank_hfs_pad_token_at_fairseqs_blank_index(exported):
    from transformers import Wav2Vec2Processor

    _, _, _, folder = exported
    tokenizer = Wav2Vec2Processor.from_pretrained(folder).tokenizer
    fairseq_symbols = dictionary_of().symbols
    assert fairseq_symbols[0] == "<s>"  # the blank of fairseq's CTC (audio_finetuning's blank_symbol)
    assert tokenizer.pad_token_id == 0 and tokenizer.convert_ids_to_tokens(0) == "<pad>"
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4, len(fairseq_symbols))] == fairseq_symbols[4:]
    word = [fairseq_symbols.index(letter) for letter in "ab|c"]
    assert tokenizer.decode([0, word[0], word[0], 0, word[0], word[1], word[2], word[3], 0]) == "aab c"


def test_the_round_trip_gives_the_stock_exports_weights_bit_for_bit(exported, tmp_path):
    from fairseq_subnets.cli.main import main
    from fairseq_subnets.plugin.formats.checkpoints import load_fairseq_checkpoint

    _, checkpoint, _, folder = exported
    assert main(["import", str(folder), str(tmp_path / "back.pt"), "--format", "hf"]) == 0
    back = load_fairseq_checkpoint(tmp_path / "back.pt")
    original = stock_state(checkpoint)
    assert sorted(back["model"]) == sorted(original)
    assert all(torch.equal(back["model"][name], original[name]) for name in original)
    assert list(back["task_state"]["target_dictionary"].symbols) == list(dictionary_of().symbols)
    assert (tmp_path / "dict.ltr.txt").read_text().split()[::2] == LETTERS


def test_a_pretraining_model_goes_to_wav2vec2_for_pretraining_and_back(tmp_path):
    from transformers import Wav2Vec2ForPreTraining

    from fairseq_subnets.interop.hf import import_hf_folder
    from fairseq_subnets.plugin.formats.checkpoints import load_fairseq_checkpoint

    checkpoint, model = write_checkpoint(tmp_path, "tiny", pretraining=True)
    export(checkpoint, tmp_path / "hf")
    hf = Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    source = audio(False)
    with torch.no_grad():
        fairseq_features = model.extract_features(source, padding_mask=None, mask=False)["x"]
        hf_features = hf.wav2vec2(source).last_hidden_state
    assert (hf_features - fairseq_features).abs().max() <= TOLERANCE
    assert torch.equal(hf.quantizer.codevectors, model.quantizer.vars)
    assert torch.equal(hf.project_hid.weight, model.final_proj.weight)
    assert import_hf_folder(tmp_path / "hf", tmp_path / "back.pt") == []
    back = load_fairseq_checkpoint(tmp_path / "back.pt")
    assert sorted(back["model"]) == sorted(model.state_dict())
    assert all(torch.equal(back["model"][name], tensor) for name, tensor in model.state_dict().items())
    assert back["cfg"]["model"]["_name"] == "wav2vec2" and back["cfg"]["task"]["normalize"] is False


def test_an_imported_ctc_model_starts_a_run_as_model_init_from_with_its_output_layer(tiny_exported, tmp_path):
    from omegaconf import OmegaConf

    from fairseq_subnets.cli.main import main
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc

    _, checkpoint, _, folder = tiny_exported
    assert main(["import", str(folder), str(tmp_path / "imported.pt"), "--format", "hf"]) == 0
    cfg = OmegaConf.merge(model_config(*SHAPES["tiny"]), {"init_from": str(tmp_path / "imported.pt")})
    started = SubnetsWav2VecCtc.build_model(cfg, types.SimpleNamespace(target_dictionary=dictionary_of()))
    original = stock_state(checkpoint)
    assert torch.equal(started.state_dict()["w2v_encoder.proj.weight"], original["w2v_encoder.proj.weight"])
    assert torch.equal(started.state_dict()["w2v_encoder.w2v_model.encoder.layers.1.fc2.weight"],
                       original["w2v_encoder.w2v_model.encoder.layers.1.fc2.weight"])


def test_a_folder_with_another_vocabulary_order_is_imported_with_the_rows_reordered(tiny_exported, tmp_path):
    """An HF vocabulary laid out otherwise (pad last, as HF fine-tuning recipes write it): the
    fairseq dictionary opens with the blank and specials, and the output rows follow the symbols."""
    import shutil

    from safetensors.torch import load_file, save_file

    from fairseq_subnets.interop.hf import import_hf_folder
    from fairseq_subnets.plugin.formats.checkpoints import load_fairseq_checkpoint

    _, checkpoint, _, folder = tiny_exported
    reordered = tmp_path / "hf"
    shutil.copytree(folder, reordered)
    vocabulary = json.loads((folder / "vocab.json").read_text())
    order = list(range(4, len(vocabulary))) + [1, 2, 3, 0]  # new row i holds old row order[i]
    tokens = {index: token for token, index in vocabulary.items()}
    (reordered / "vocab.json").write_text(json.dumps({tokens[old]: new for new, old in enumerate(order)}))
    config = json.loads((folder / "config.json").read_text())
    config.update(pad_token_id=len(order) - 1, bos_token_id=len(order) - 4, eos_token_id=len(order) - 3)
    (reordered / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    weights.update({name: weights[name][order] for name in ("lm_head.weight", "lm_head.bias")})
    save_file(weights, reordered / "model.safetensors", metadata={"format": "pt"})
    import_hf_folder(reordered, tmp_path / "back.pt")
    back = load_fairseq_checkpoint(tmp_path / "back.pt")
    original = stock_state(checkpoint)
    assert torch.equal(back["model"]["w2v_encoder.proj.weight"], original["w2v_encoder.proj.weight"])
    assert list(back["task_state"]["target_dictionary"].symbols) == list(dictionary_of().symbols)


def test_a_fixed_mask_model_exports_with_its_masks_baked_and_computes_alike(tmp_path):
    from transformers import Wav2Vec2ForCTC

    from factory import write_plugin_checkpoint

    path, model, masks = write_plugin_checkpoint(tmp_path)
    export(path, tmp_path / "hf")
    hf = Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf").eval()
    weights = dict(hf.wav2vec2.named_parameters())
    assert all(torch.equal(weights[name.replace("self_attn.", "attention.").replace("fc1", "feed_forward.intermediate_dense")
                                   .replace("fc2", "feed_forward.output_dense")] != 0, mask)
               for name, mask in masks.items())
    source = audio(False)
    with torch.no_grad():
        fairseq_logits = model.eval().get_logits(model(source=source, padding_mask=None)).transpose(0, 1)
        assert (hf(source).logits - fairseq_logits).abs().max() <= TOLERANCE


@pytest.mark.parametrize("method", list(TUNERS))
def test_a_tuned_model_exports_merged_and_computes_alike(method, tmp_path):
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf
    from transformers import Wav2Vec2ForCTC

    from fairseq_subnets.plugin.formats.checkpoints import trainer_checkpoint
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc

    cfg = OmegaConf.structured(FairseqConfig)
    cfg.model = OmegaConf.merge(model_config(*SHAPES["tiny"]), {"tuner": method, **TUNER_SETTINGS.get(method, {})})
    cfg.task = {"_name": "subnets_audio_finetuning", "data": str(tmp_path), "labels": "ltr", "normalize": False}
    dictionary = dictionary_of()
    torch.manual_seed(0)
    model = perturbed(SubnetsWav2VecCtc.build_model(cfg.model, types.SimpleNamespace(target_dictionary=dictionary)))
    torch.save(trainer_checkpoint(cfg, model.state_dict(), "SubnetsCtcCriterion",
                                  task_state={"target_dictionary": dictionary}), tmp_path / "tuned.pt")
    export(tmp_path / "tuned.pt", tmp_path / "hf")
    hf = Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf").eval()
    source = audio(False)
    with torch.no_grad():
        fairseq_logits = model.get_logits(model(source=source, padding_mask=None)).transpose(0, 1)
        assert (hf(source).logits - fairseq_logits).abs().max() <= TOLERANCE


def test_one_language_of_a_pathways_model_exports_with_its_masks_and_head(tmp_path):
    from omegaconf import OmegaConf
    from transformers import Wav2Vec2ForCTC

    from fairseq_subnets.core.transforms import add_transform
    from fairseq_subnets.plugin.formats.upstream import LANGUAGE_DICTIONARIES_KEY
    from fairseq_subnets.techniques.pathways.layer import LanguageMasks
    from test_multilingual_heads import build, multilingual_task

    model = build(multilingual_task())
    fc1 = model.get_submodule("w2v_encoder.w2v_model.encoder.layers.0.fc1")
    generator = torch.Generator().manual_seed(0)
    add_transform(fc1, "pathways", LanguageMasks({language: torch.rand(fc1.weight.shape, generator=generator) < 0.5
                                                  for language in ("es", "ca")}))
    dictionaries = {"es": list(dictionary_of(LETTERS[:6]).symbols), "ca": list(dictionary_of(LETTERS[:8]).symbols)}
    torch.save({"cfg": {"model": OmegaConf.to_container(model.cfg, enum_to_str=True), "task": {"normalize": False}},
                "model": model.state_dict(), "task_state": {LANGUAGE_DICTIONARIES_KEY: dictionaries}},
               tmp_path / "pathways.pt")
    export(tmp_path / "pathways.pt", tmp_path / "hf", "--language", "ca")
    hf = Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf")
    state = model.state_dict()
    mask = state["w2v_encoder.w2v_model.encoder.layers.0.fc1.parametrizations.weight.0.language_masks.pathways.ca"]
    masked = torch.where(mask, state["w2v_encoder.w2v_model.encoder.layers.0.fc1.parametrizations.weight.original"], 0.0)
    assert torch.equal(hf.wav2vec2.encoder.layers[0].feed_forward.intermediate_dense.weight, masked)
    assert torch.equal(hf.lm_head.weight, state["language_heads.ca.weight"])
    assert hf.config.vocab_size == len(dictionaries["ca"])


@pytest.mark.slow
def test_importing_the_package_and_registering_the_plugin_never_imports_transformers(tmp_path):
    """In a fresh interpreter holding only fairseq's commands' modules (forked from the suite's
    fork server: importing fairseq anew would cost seconds)."""
    from fairseq_subnets.runner import run_logged

    script = ("import sys, fairseq_subnets\n"
              "from fairseq import utils\n"
              "from argparse import Namespace\n"
              "utils.import_user_module(Namespace(user_dir=fairseq_subnets.USER_DIR))\n"
              "import fairseq_subnets.plugin.tools.export\n"
              "print(sorted(name for name in sys.modules if name.split('.')[0] in ('transformers', 'peft')))")
    assert run_logged([sys.executable, "-c", script], tmp_path / "imports.log").strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------ the trained model

@pytest.mark.slow
def test_the_trained_model_transcribes_its_test_set_alike_in_hf(skeleton_run, tmp_path):
    """HF's logits and greedy transcripts equal fairseq's on every test utterance; imported back,
    fairseq builds the model from the checkpoint's own config (as fairseq-generate does) and it
    computes the same logits."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    from fairseq_subnets.cli.main import main
    from fairseq_subnets.plugin.components.generator import CtcGreedyGenerator
    from test_skeleton_pipeline import build_from_checkpoint

    _, result = skeleton_run
    export(result.finetuned_checkpoint, tmp_path / "hf")
    hf = Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf").eval()
    processor = Wav2Vec2Processor.from_pretrained(tmp_path / "hf")
    task, model = build_from_checkpoint(result.finetuned_checkpoint, "subnets_wav2vec_ctc")
    task.load_dataset("test")
    dataset = task.dataset("test")
    dictionary = task.target_dictionary
    generator = CtcGreedyGenerator(dictionary, blank_index=dictionary.index(task.blank_symbol))
    worst, transcripts = 0.0, []
    with torch.no_grad():
        for index in range(len(dataset)):
            sample = dataset.collater([dataset[index]])
            net_output = model(**sample["net_input"])
            fairseq_logits = model.get_logits(net_output).transpose(0, 1)
            hf_logits = hf(sample["net_input"]["source"]).logits
            worst = max(worst, float((hf_logits - fairseq_logits).abs().max()))
            tokens = generator.best_path(model.get_normalized_probs(net_output, log_probs=True)[:, 0])["tokens"]
            fairseq_text = dictionary.string(tokens, extra_symbols_to_ignore=generator.symbols_to_strip_from_output)
            hf_text = processor.batch_decode(hf_logits.argmax(-1))[0]
            transcripts.append((fairseq_text.replace(" ", "").replace("|", " ").strip(), hf_text))
    assert len(transcripts) == result.test_utterances
    assert worst <= TOLERANCE
    (tmp_path / "back").mkdir()
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "back" / "imported.pt"), "--format", "hf"]) == 0
    _, imported = build_from_checkpoint(tmp_path / "back" / "imported.pt", "wav2vec_ctc")
    with torch.no_grad():
        imported_logits = imported.get_logits(imported(**sample["net_input"]))
    assert torch.equal(imported_logits.transpose(0, 1), fairseq_logits)
    assert [hf for _, hf in transcripts] == [fairseq for fairseq, _ in transcripts]
    assert sum(bool(fairseq) for fairseq, _ in transcripts) > len(transcripts) // 2  # it says something


@pytest.mark.slow
def test_a_pretrained_model_through_hf_and_back_starts_fine_tuning_as_w2v_path(skeleton_run, tmp_path):
    from fairseq_subnets import USER_DIR
    from fairseq_subnets.cli.main import main
    from fairseq_subnets.runner import hydra_train

    settings, result = skeleton_run
    export(result.pretrained_checkpoint, tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "imported.pt"), "--format", "hf"]) == 0
    log = hydra_train("tiny", [
        f"common.user_dir={USER_DIR}", f"task.data={Path(result.corpus_dir) / settings.language}",
        f"model.w2v_path={tmp_path / 'imported.pt'}", f"checkpoint.save_dir={tmp_path / 'run'}",
        "optimization.max_update=4", "checkpoint.no_save=true", "dataset.validate_interval_updates=0",
        "dataset.disable_validation=true",
    ], tmp_path / "train.log")
    assert "num_updates 4" in log or "done training" in log


def test_the_folder_and_the_imported_files_follow_the_umask(tiny_exported, tmp_path):
    from fairseq_subnets.cli.main import main
    from test_output_permissions import mode, process_umask

    _, checkpoint, _, _ = tiny_exported
    with process_umask(0o027):
        export(checkpoint, tmp_path / "hf")
        assert main(["import", str(tmp_path / "hf"), str(tmp_path / "back.pt"), "--format", "hf"]) == 0
    assert oct(mode(tmp_path / "hf")) == oct(0o750)
    written = [*(tmp_path / "hf").iterdir(), tmp_path / "back.pt", tmp_path / "dict.ltr.txt"]
    assert {path.name: oct(mode(path)) for path in written} == {path.name: oct(0o640) for path in written}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["back.pt", "dict.ltr.txt", "hf"]  # no leftovers
