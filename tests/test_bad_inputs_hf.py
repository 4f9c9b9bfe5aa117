"""The "HF transformers export and import" catalogue of docs/bad-inputs.md, one test per row.

Each case runs the real `fairseq-subnets export --format hf` or `import --format hf` in-process on
one bad input, with the checks of tests/test_bad_inputs_files.py: the documented exit status and
last stderr line naming the culprit, no traceback, nothing new on disk, nothing unpickled.
"""
import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

from test_bad_inputs_files import EXECUTED_MARKER, Case, assert_documented, assert_refused_with_one_line
from test_hf_interop import export, write_checkpoint

EXPORT_ERROR = "fairseq-subnets export: error: "
IMPORT_ERROR = "fairseq-subnets import: error: "
EXPORT = ("export", "<CKPT>", "--format", "hf", "--out", "<OUT>")
IMPORT = ("import", "<DIR>", "<OUT>", "--format", "hf")


def export_of(case_id, checkpoint, message, *options, culprit="<CKPT>"):
    return Case(case_id, [*EXPORT, *options], EXPORT_ERROR + message, culprit, {"<CKPT>": checkpoint})


def import_of(case_id, folder, message, culprit="<DIR>"):
    return Case(case_id, IMPORT, IMPORT_ERROR + message, culprit, {"<DIR>": folder})


CASES = [
    export_of("export-hf-multilingual-without-language", "multilingual.pt",
              "<CKPT>: a multilingual model (es, ca); HF's Wav2Vec2ForCTC holds one language: name it with --language"),
    export_of("export-hf-without-dictionary", "stock.pt", "<CKPT>: holds no target dictionary (task_state); name "
              "the dict.ltr.txt it was trained with: --dictionary"),
    export_of("export-hf-dictionary-of-other-size", "tiny.pt", "<CKPT>: the output layer has 32 rows, the dictionary "
              "10 symbols", "--dictionary", "<DICT>"),
    export_of("export-hf-dictionary-of-pretraining-model", "pretraining.pt", "--dictionary: <CKPT> is a pretraining "
              "model, which has no output layer", "--dictionary", "<DICT>"),
    Case("export-dictionary-without-format-hf", ["export", "<CKPT>", "--dictionary", "<DICT>", "--out", "<OUT>"],
         EXPORT_ERROR + "--dictionary names the vocabulary of an HF folder: it needs --format hf", "--format hf",
         {"<CKPT>": "tiny.pt"}),
    export_of("export-hf-no-feature-projection", "width512.pt", "<CKPT>: model.encoder_embed_dim: equals the "
              "feature extractor's width (512), so fairseq has no post_extract_proj, which HF's Wav2Vec2 always has"),
    export_of("export-hf-conformer-layers", "conformer.pt",
              "<CKPT>: model.layer_type=conformer: HF's Wav2Vec2 holds transformer layers only"),
    export_of("export-hf-other-activation", "tanh.pt",
              "<CKPT>: model.activation_fn=tanh: only gelu, relu are computed alike by both"),
    export_of("export-hf-two-positional-convolutions", "two-pos-convs.pt",
              "<CKPT>: model.pos_conv_depth=2: HF's Wav2Vec2 has one positional convolution"),
    export_of("export-hf-fairseq-adapters", "fairseq-adapters.pt",
              "<CKPT>: model.adp_num: HF's Wav2Vec2 has no per-layer adapters of fairseq's kind"),
    export_of("export-hf-quantized-inputs", "quantized-inputs.pt",
              "<CKPT>: model.quantize_input/same_quantizer/target_glu/quantizer_depth: HF's Wav2Vec2ForPreTraining "
              "has one single-layer quantizer of the targets only"),
    export_of("export-hf-dictionary-unreadable", "tiny.pt", "--dictionary <GARBAGE>: not a fairseq dictionary",
              "--dictionary", "<GARBAGE>", culprit="<GARBAGE>"),
    Case("export-hf-out-not-empty", [*EXPORT[:-1], "<FULL>"], EXPORT_ERROR + "<FULL>: exists and is not an empty "
         "folder; name a new folder", "<FULL>", {"<CKPT>": "tiny.pt", "<FULL>": "full"}),
    Case("export-hf-without-transformers", EXPORT, EXPORT_ERROR + "HF export and import need transformers, which "
         "is not installed: pip install 'fairseq_subnets[hf]'", "transformers", {"<CKPT>": "tiny.pt"}),
    import_of("import-hf-no-config", "empty", "<DIR>: no config.json; is it a saved HF model folder?"),
    import_of("import-hf-other-architecture", "classifier", "<DIR>/config.json: architectures "
              "['Wav2Vec2ForSequenceClassification']; import reads Wav2Vec2ForCTC, Wav2Vec2ForPreTraining or "
              "Wav2Vec2Model"),
    import_of("import-hf-no-feature-extractor", "no-preprocessor", "<DIR>: no feature extractor settings "
              "(preprocessor_config.json or processor_config.json), so whether the model expects normalized audio "
              "(do_normalize) is unknown"),
    import_of("import-hf-pickled-weights", "pickled", "<DIR>: holds pytorch_model.bin only, a pickle, which is "
              "never unpickled here; save the model with safe_serialization=True (model.safetensors)"),
    import_of("import-hf-vocabulary-without-specials", "no-unk", "<DIR>: vocab.json: lacks unk_token '<unk>'; "
              "fairseq's dictionary needs all four specials"),
    import_of("import-hf-attention-adapters", "adapters", "<DIR>: adapter_attn_dim=16: fairseq's wav2vec2 has no "
              "attention adapters (MMS); load the adapter of one language and save it merged"),
    import_of("import-hf-output-adapter", "output-adapter",
              "<DIR>: add_adapter=true: fairseq's wav2vec2 has no output adapter"),
    import_of("import-hf-extractor-activation", "relu-extractor",
              "<DIR>: feat_extract_activation=relu: fairseq's extractor uses gelu"),
    import_of("import-hf-layer-norm-eps", "other-eps", "<DIR>: layer_norm_eps=1e-06: fairseq's layer norms use 1e-5"),
    import_of("import-hf-weights-of-other-shapes", "wider-ffn", "<DIR>/model.safetensors as Wav2Vec2ForCTC has other "
              "shapes for wav2vec2.encoder.layers.0.feed_forward.intermediate_dense.bias"),
    import_of("import-hf-truncated-weights", "truncated", "<DIR>/model.safetensors: not readable safetensors"),
    import_of("import-hf-blank-not-the-pad-token", "blank-elsewhere",
              "<DIR>: the CTC blank: config.json pad_token_id=5, vocab.json <pad>=0"),
    import_of("import-hf-vocabulary-longer-than-output", "vocab-longer",
              "<DIR>: vocab.json has 33 tokens, config.json vocab_size 32"),
    import_of("import-hf-token-with-space", "vocab-space",
              "<DIR>: vocab.json: tokens ['a b'] hold white space, which dict.ltr.txt cannot"),
    Case("import-hf-other-dictionary-beside", [*IMPORT[:2], "<BESIDE>", *IMPORT[3:]], IMPORT_ERROR +
         "<TAKEN>: exists and holds another dictionary; write the checkpoint into another folder", "<TAKEN>",
         {"<DIR>": "hf", "<BESIDE>": "taken/out.pt", "<TAKEN>": "taken/dict.ltr.txt"}),
]
CATALOGUE_IDS = tuple(case.id for case in CASES)


class Payload:
    """Creates EXECUTED_MARKER in the inputs folder if anything unpickles it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.mkdir, (Path(self.marker),))


def edited_copy(source: Path, target: Path, config=None, remove=(), vocabulary=None):
    """A copy of the HF folder `source` with config.json updated, files removed, vocab.json replaced."""
    shutil.copytree(source, target)
    if config:
        (target / "config.json").write_text(json.dumps({**json.loads((source / "config.json").read_text()), **config}))
    for name in remove:
        (target / name).unlink()
    if vocabulary is not None:
        (target / "vocab.json").write_text(json.dumps(vocabulary))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from fairseq_subnets.plugin.tools.export import export_plain_checkpoint

    folder = tmp_path_factory.mktemp("hf-inputs")
    write_checkpoint(folder, "tiny", pretraining=True)
    (folder / "tiny.pt").rename(folder / "pretraining.pt")
    write_checkpoint(folder, "tiny")
    export_plain_checkpoint(folder / "tiny.pt", folder / "stock.pt")
    (folder / "dict.txt").write_text("".join(f"{letter} 1\n" for letter in "abcdef"))
    torch.save({"cfg": {"model": {"languages": ["es", "ca"]}}, "model": {}}, folder / "multilingual.pt")
    write_width_512_model(folder / "width512.pt")
    (folder / "full").mkdir()
    (folder / "full" / "keep.txt").write_text("mine\n")
    export(folder / "tiny.pt", folder / "hf")
    (folder / "empty").mkdir()
    edited_copy(folder / "hf", folder / "classifier", config={"architectures": ["Wav2Vec2ForSequenceClassification"]})
    edited_copy(folder / "hf", folder / "no-preprocessor", remove=["processor_config.json"])
    edited_copy(folder / "hf", folder / "pickled", remove=["model.safetensors"])
    with open(folder / "pickled" / "pytorch_model.bin", "wb") as stream:
        pickle.dump(Payload(folder / EXECUTED_MARKER), stream)
    vocabulary = json.loads((folder / "hf" / "vocab.json").read_text())
    vocabulary["[UNK]"] = vocabulary.pop("<unk>")  # the tokenizer still names <unk>
    edited_copy(folder / "hf", folder / "no-unk", vocabulary=vocabulary)
    edited_copy(folder / "hf", folder / "adapters", config={"adapter_attn_dim": 16})
    (folder / "taken").mkdir()
    (folder / "taken" / "dict.ltr.txt").write_text("x 1\n")
    (folder / "garbage.txt").write_bytes(b"\x00\x01 not a dictionary\n")
    for name, w2v_settings in W2V_EDITS.items():
        edited_checkpoint(folder / "tiny.pt", folder / f"{name}.pt", w2v_settings)
    edited_checkpoint(folder / "pretraining.pt", folder / "quantized-inputs.pt", {"quantize_input": True})
    for name, settings in CONFIG_EDITS.items():
        edited_copy(folder / "hf", folder / name, config=settings)
    vocabulary = json.loads((folder / "hf" / "vocab.json").read_text())
    edited_copy(folder / "hf", folder / "vocab-longer", vocabulary={**vocabulary, "ñ": len(vocabulary)})
    vocabulary["a b"] = vocabulary.pop("a")
    edited_copy(folder / "hf", folder / "vocab-space", vocabulary=vocabulary)
    edited_copy(folder / "hf", folder / "truncated", remove=["model.safetensors"])
    (folder / "truncated" / "model.safetensors").write_bytes((folder / "hf" / "model.safetensors").read_bytes()[:5000])
    return folder


W2V_EDITS = {"conformer": {"layer_type": "conformer"}, "tanh": {"activation_fn": "tanh"},
             "two-pos-convs": {"pos_conv_depth": 2}, "fairseq-adapters": {"adp_num": 2}}
"""Checkpoint name -> wav2vec2 config settings HF's wav2vec2 cannot hold (set in a copy of a tiny
CTC checkpoint's config; the refusal comes before the weights are read)."""
CONFIG_EDITS = {"output-adapter": {"add_adapter": True}, "relu-extractor": {"feat_extract_activation": "relu"},
                "other-eps": {"layer_norm_eps": 1e-6}, "wider-ffn": {"intermediate_size": 256},
                "blank-elsewhere": {"pad_token_id": 5}}
"""HF folder name -> config.json settings fairseq's wav2vec2 cannot hold, or that contradict the folder."""


def edited_checkpoint(source: Path, target: Path, w2v_settings):
    """A copy of a fairseq checkpoint with its wav2vec2 config updated; of a CTC model, both its
    w2v_args and the keys of its own config that fairseq copies over them (layer_type, adp_num)."""
    checkpoint = torch.load(source, weights_only=False)
    model_cfg = checkpoint["cfg"]["model"]
    if "w2v_args" in model_cfg:
        model_cfg["w2v_args"]["model"].update(w2v_settings)
        model_cfg.update({key: value for key, value in w2v_settings.items() if key in model_cfg})
    else:
        model_cfg.update(w2v_settings)
    torch.save(checkpoint, target)


def write_width_512_model(path):
    """A pretraining checkpoint whose encoder is as wide as its feature extractor (no projection)."""
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, save_untrained_pretraining_checkpoint

    save_untrained_pretraining_checkpoint(path, CtcModelSize(layers=1, width=512, ffn=128), normalize=False)


@pytest.mark.parametrize("case", CASES, ids=CATALOGUE_IDS)
def test_bad_hf_input_gets_one_line_naming_the_culprit(case, inputs, tmp_path, capsys, monkeypatch):
    paths = {"<OUT>": str(tmp_path / "out"), "<DICT>": str(inputs / "dict.txt"), "<GARBAGE>": str(inputs / "garbage.txt"),
             **{name: str(inputs / file) for name, file in case.paths.items()}}
    if case.id == "export-hf-without-transformers":
        monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` meets uninstalled
    assert_refused_with_one_line(case, paths, inputs, tmp_path, capsys)
    assert not (inputs / EXECUTED_MARKER).exists()


def test_the_catalogue_documents_exactly_these_messages_and_exit_statuses():
    assert_documented(CASES)
