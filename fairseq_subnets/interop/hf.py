"""HF transformers folders from fairseq checkpoints, and fairseq checkpoints from HF folders.

Export starts from the stock checkpoint `fairseq-subnets export` writes (plugin.tools.export: masks and
merged tuners baked, one language picked), so every kind of subnetwork that has a stock form has an
HF form too. Its folder holds what `Wav2Vec2ForCTC.from_pretrained` (or Wav2Vec2ForPreTraining /
Wav2Vec2Model for a pretraining checkpoint) and `Wav2Vec2Processor.from_pretrained` read offline:
safetensors weights, the config, and for a CTC model the vocabulary and tokenizer settings, with
the feature extractor's `do_normalize` taken from the task the model was trained with.

Import reads such a folder (safetensors only: a pickled `pytorch_model.bin` is never unpickled)
and writes a checkpoint in the layout fairseq's trainer writes: a pretraining one for
`model.w2v_path`, or a fine-tuned CTC one, with its dictionary in the task state and in a
`dict.ltr.txt` beside it, for `model.init_from` and fairseq-generate.

The weights keep their values bit for bit both ways (interop.hf_layout names them); the folder and
each file are written whole or not at all. transformers is an optional dependency
(`pip install fairseq_subnets[hf]`), imported by these functions only.
"""
import io
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import List, Optional

import torch
from fairseq.data import Dictionary
from fairseq.dataclass.configs import FairseqConfig
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig
from omegaconf import OmegaConf

from ..atomic import check_folder_writable, check_writable, write_atomically
from ..component_names import STOCK_CTC_MODEL, STOCK_FINETUNING_TASK, STOCK_PRETRAINING_TASK
from ..core.maskfile import load_mask_file
from ..errors import PluginInputError
from ..plugin.formats.checkpoint_kinds import FINE_TUNED, checkpoint_kind
from ..plugin.formats.checkpoints import load_fairseq_checkpoint, trainer_checkpoint
from ..plugin.tools.export import plain_checkpoint
from ..plugin.formats.upstream import LANGUAGE_DICTIONARIES_KEY
from .hf_layout import (
    CTC_DROPOUT_FIELDS, CTC_ENCODER_PREFIX, CTC_OUTPUT_PREFIX, HF_BODY_PREFIX, WORD_DELIMITER, LayoutError,
    dropped_heads, fairseq_model_fields, fairseq_state, fairseq_symbols, has_quantizer, hf_config_fields,
    hf_state, hf_vocabulary,
)

INSTALL_HINT = "pip install 'fairseq_subnets[hf]'"
WEIGHTS_FILE = "model.safetensors"
CTC, PRETRAINING, ENCODER = "Wav2Vec2ForCTC", "Wav2Vec2ForPreTraining", "Wav2Vec2Model"
"""The HF architectures each side holds: a CTC model, a pretraining model with its quantizer, and
a pretraining model without one (its contrastive heads have no HF form)."""
LETTER_DICTIONARY = "dict.ltr.txt"
FEATURE_EXTRACTOR_FILES = ("preprocessor_config.json", "processor_config.json")
W2V_ARGS_REPLACED = ("layer_type", "adp_num")
"""Keys of a fine-tuned model's config that replace those of its pretraining config when fairseq
builds the encoder (wav2vec2_asr), and that decide what HF can hold."""


class HfInteropError(PluginInputError):
    """A model, folder or setting the HF export or import cannot carry; one line naming the file."""


def transformers_module():
    """transformers, or the one-line error that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise HfInteropError(f"HF export and import need transformers, which is not installed: {INSTALL_HINT}") from None
    return transformers


# ------------------------------------------------------------------------------------------ export

def export_hf_folder(checkpoint_path, out_dir, mask_path=None, language=None, dictionary_path=None) -> List[str]:
    """Writes the HF folder `out_dir` (which must not exist, or be empty) of a checkpoint, as
    plugin.tools.export's stock checkpoint with the same `mask_path` and `language`. A CTC model's
    vocabulary comes from the checkpoint's task state, or from `dictionary_path` (a fairseq
    dictionary file) when the checkpoint has none. Returns notes on what was left out."""
    transformers = transformers_module()
    check_empty_folder(out_dir)
    state = load_fairseq_checkpoint(checkpoint_path)
    mask_file = load_mask_file(mask_path) if mask_path else None
    model_cfg = plain_config((state.get("cfg") or {}).get("model"))
    languages = list(model_cfg.get("languages") or [])
    if languages and language is None:
        raise HfInteropError(f"{checkpoint_path}: a multilingual model ({', '.join(languages)}); HF's Wav2Vec2ForCTC "
                             "holds one language: name it with --language")
    stock = plain_checkpoint(state, checkpoint_path, mask_file, language)
    ctc = checkpoint_kind(stock, "checkpoint", checkpoint_path) == FINE_TUNED
    if dictionary_path is not None and not ctc:
        raise HfInteropError(f"--dictionary: {checkpoint_path} is a pretraining model, which has no output layer")
    symbols = output_symbols(state, checkpoint_path, language, dictionary_path) if ctc else None
    try:
        fields, weights, notes = hf_form(stock, ctc, symbols)
        vocabulary = hf_vocabulary(symbols) if ctc else None
    except LayoutError as error:
        raise HfInteropError(f"{checkpoint_path}: {error}") from None
    architecture = CTC if ctc else PRETRAINING if has_quantizer(stock["model"]) else ENCODER
    config = transformers.Wav2Vec2Config(architectures=[architecture], **fields)
    notes += weights_that_fit(transformers, architecture, config, weights, checkpoint_path)
    task = plain_config(stock["cfg"].get("task"))
    feature_extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=int(task.get("sample_rate", 16000)), padding_value=0.0,
        do_normalize=bool(task.get("normalize", False)), return_attention_mask=fields["feat_extract_norm"] == "layer")
    with folder_written_whole(out_dir) as folder:
        from safetensors.torch import save

        # serialized here and written with open(): safetensors' own save_file creates the file 0600
        with open(os.path.join(folder, WEIGHTS_FILE), "wb") as stream:
            stream.write(save({name: tensor.contiguous() for name, tensor in weights.items()}, metadata={"format": "pt"}))
        config.save_pretrained(folder)
        if ctc:
            vocab_path = os.path.join(folder, "vocab.json")
            with open(vocab_path, "w", encoding="utf-8") as stream:
                json.dump(vocabulary, stream, ensure_ascii=False, indent=1)
            tokenizer = transformers.Wav2Vec2CTCTokenizer(vocab_path, word_delimiter_token=WORD_DELIMITER)
            transformers.Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
        else:
            feature_extractor.save_pretrained(folder)
    return notes


def plain_config(node) -> dict:
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else dict(node or {})


def with_defaults(dataclass_type, values) -> dict:
    """`values` (a config section) with the dataclass's defaults for the keys it lacks; keys the
    dataclass does not know are dropped."""
    known = {key: value for key, value in values.items() if key in dataclass_type.__dataclass_fields__}
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(dataclass_type), known), enum_to_str=True)


def hf_form(stock, ctc: bool, symbols):
    """(Wav2Vec2Config fields, HF weights, notes) of a stock checkpoint."""
    model_cfg = plain_config(stock["cfg"].get("model"))
    w2v = plain_config(plain_config(model_cfg.get("w2v_args")).get("model")) if ctc else model_cfg
    if ctc:
        w2v.update({key: model_cfg[key] for key in W2V_ARGS_REPLACED if model_cfg.get(key) is not None})
    w2v = with_defaults(Wav2Vec2Config, w2v)
    model_state = stock["model"]
    body = CTC_ENCODER_PREFIX if ctc else ""
    fields = hf_config_fields(w2v, f"{body}post_extract_proj.weight" in model_state,
                              pretraining_heads=not ctc and has_quantizer(model_state),
                              training=with_defaults(Wav2Vec2CtcConfig, model_cfg) if ctc else None)
    notes = [f"not carried: {', '.join(dropped)} (contrastive-loss heads of a model without a quantizer; "
             "HF keeps them only beside one)" for dropped in [dropped_heads(model_state, ctc)] if dropped]
    if ctc:
        rows = model_state[f"{CTC_OUTPUT_PREFIX}weight"].shape[0]
        if rows != len(symbols):
            raise LayoutError(f"the output layer has {rows} rows, the dictionary {len(symbols)} symbols")
        fields.update(vocab_size=rows, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return fields, hf_state(model_state, ctc), notes


def output_symbols(state, checkpoint_path, language: Optional[str], dictionary_path) -> List[str]:
    """The symbols a CTC checkpoint's output layer scores: --dictionary, else the task state's."""
    if dictionary_path is not None:
        try:
            return list(Dictionary.load(str(dictionary_path)).symbols)
        except (OSError, ValueError, RuntimeError) as error:
            raise HfInteropError(f"--dictionary {dictionary_path}: not a fairseq dictionary ({error})") from None
    task_state = state.get("task_state") or {}
    found = (task_state.get(LANGUAGE_DICTIONARIES_KEY) or {}).get(language) if language else task_state.get(
        "target_dictionary")
    if found is None:
        raise HfInteropError(f"{checkpoint_path}: holds no target dictionary (task_state); name the dict.ltr.txt "
                             "it was trained with: --dictionary")
    return list(getattr(found, "symbols", found))


def weights_that_fit(transformers, architecture, config, weights, checkpoint_path) -> List[str]:
    """Checks the HF weights against the model HF builds from `config` (on the meta device: no
    memory, no initialisation); HF keeps fairseq's mask embedding only while masking is on, else
    it is left out with a note. Returns the notes."""
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in
                    getattr(transformers, architecture)(config).state_dict().items()}
    notes = []
    for name in [name for name in weights if name not in expected and name.endswith("masked_spec_embed")]:
        del weights[name]
        notes.append("not carried: mask_emb (HF keeps it only while time or feature masking is on)")
    compare_weights(weights, expected, f"{checkpoint_path} as HF's {architecture}")
    return notes


def compare_weights(weights, expected, what):
    """HfInteropError naming the first weights that are missing, extra or of another shape."""
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    reshaped = sorted(name for name in set(weights) & set(expected) if tuple(weights[name].shape) != expected[name])
    for problem, names in (("lacks", missing), ("has no place for", extra), ("has other shapes for", reshaped)):
        if names:
            raise HfInteropError(f"{what} {problem} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")


def check_empty_folder(out_dir):
    """OUT must not exist (its parent writable) or be an empty folder: an export never mixes its
    files with others."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HfInteropError(f"{out_dir}: exists and is not an empty folder; name a new folder")
    check_folder_writable(out_dir.parent)


class folder_written_whole:
    """Yields a hidden folder beside `out_dir` to write into; it becomes `out_dir` only when the
    block succeeds, else it is removed. Made with mkdir's default mode, so the umask applies."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.partial = self.out_dir.parent / f".{self.out_dir.name}.{secrets.token_hex(8)}.partial"

    def __enter__(self):
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir()
        return str(self.partial)

    def __exit__(self, kind, error, traceback):
        if kind is None:
            try:
                os.replace(self.partial, self.out_dir)  # replaces an empty folder only
                return False
            except OSError:
                shutil.rmtree(self.partial, ignore_errors=True)
                raise
        shutil.rmtree(self.partial, ignore_errors=True)
        return False


# ------------------------------------------------------------------------------------------ import

def import_hf_folder(folder, out_path) -> List[str]:
    """Writes the fairseq checkpoint `out_path` of the HF folder `folder` (Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining or Wav2Vec2Model, weights in safetensors): a CTC model as a fine-tuned
    checkpoint holding its dictionary, with `dict.ltr.txt` written beside it; otherwise a
    pretraining checkpoint. Everything is read and checked before anything is written. Returns
    notes on what was filled in."""
    transformers = transformers_module()
    folder = Path(folder)
    check_writable(out_path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HfInteropError(f"{folder}: no config.json; is it a saved HF model folder?")
    try:
        config = transformers.Wav2Vec2Config.from_pretrained(str(folder)).to_dict()
    except (OSError, ValueError) as error:
        raise HfInteropError(f"{config_path}: not an HF wav2vec2 config ({str(error).splitlines()[0]})") from None
    architectures = config.get("architectures") or []
    known = [name for name in architectures if name in (CTC, PRETRAINING, ENCODER)]
    if len(known) != 1:
        raise HfInteropError(f"{config_path}: architectures {architectures}; import reads {CTC}, {PRETRAINING} "
                             f"or {ENCODER}")
    architecture = known[0]
    ctc = architecture == CTC
    try:
        model_fields = fairseq_model_fields(config, pretraining_heads=architecture == PRETRAINING)
    except LayoutError as error:
        raise HfInteropError(f"{folder}: {error}") from None
    normalize, sample_rate = preprocessing(transformers, folder)
    weights = read_safetensors(folder)
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in
                    getattr(transformers, architecture)(transformers.Wav2Vec2Config(**config)).state_dict().items()}
    notes = []
    mask_embedding = ("" if architecture == ENCODER else HF_BODY_PREFIX) + "masked_spec_embed"
    expected[mask_embedding] = (config["hidden_size"],)  # fairseq's model always has one
    if mask_embedding not in weights:
        weights[mask_embedding] = torch.zeros(config["hidden_size"])
        notes.append("filled in: mask_emb as zeros (the folder has none: its masking was off)")
    compare_weights(weights, expected, f"{folder}/{WEIGHTS_FILE} as {architecture}")
    try:
        dictionary = None
        if ctc:
            symbols, rows = hf_symbols(transformers, folder, config)
            weights = {name: (tensor[rows] if name.startswith("lm_head.") and rows != sorted(rows) else tensor)
                       for name, tensor in weights.items()}
            dictionary = fairseq_dictionary(symbols)
        model_state = fairseq_state(weights, ctc, layer_norm_extractor=config["feat_extract_norm"] == "layer")
    except LayoutError as error:
        raise HfInteropError(f"{folder}: {error}") from None
    w2v_model = OmegaConf.structured(Wav2Vec2Config(**model_fields))
    w2v_model._name = "wav2vec2"
    pretraining_task = {"_name": STOCK_PRETRAINING_TASK, "data": str(folder), "normalize": normalize,
                        "sample_rate": sample_rate}
    cfg = OmegaConf.structured(FairseqConfig)
    if ctc:
        dictionary_path = Path(out_path).parent / LETTER_DICTIONARY
        check_dictionary_beside(dictionary_path, dictionary)
        cfg.model = OmegaConf.structured(Wav2Vec2CtcConfig(
            w2v_path=str(folder), w2v_args=OmegaConf.create({"model": w2v_model, "task": pretraining_task}),
            data=str(dictionary_path.parent), normalize=normalize,
            **{name: config[field] for name, field in CTC_DROPOUT_FIELDS if field in config}))
        cfg.model._name = STOCK_CTC_MODEL
        cfg.task = {"_name": STOCK_FINETUNING_TASK, "data": str(dictionary_path.parent), "labels": "ltr",
                    "normalize": normalize, "sample_rate": sample_rate}
        checkpoint = trainer_checkpoint(cfg, model_state, "CtcCriterion", task_state={"target_dictionary": dictionary})
    else:
        cfg.model = w2v_model
        cfg.task = pretraining_task
        checkpoint = trainer_checkpoint(cfg, model_state, "Wav2vecCriterion")
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    if ctc:  # first: a checkpoint on disk always has its dictionary beside it
        write_atomically(dictionary_path, dictionary_text(dictionary).encode())
    write_atomically(out_path, buffer.getvalue())
    return notes


def preprocessing(transformers, folder: Path):
    """(do_normalize, sampling_rate) of the folder's feature extractor settings (its own file, or
    the processor's, where transformers 5 saves them)."""
    if not any((folder / name).is_file() for name in FEATURE_EXTRACTOR_FILES):
        raise HfInteropError(f"{folder}: no feature extractor settings ({' or '.join(FEATURE_EXTRACTOR_FILES)}), so "
                             "whether the model expects normalized audio (do_normalize) is unknown; save its "
                             "feature extractor or processor into the folder")
    try:
        settings = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise HfInteropError(f"{folder}: unreadable feature extractor settings ({str(error).splitlines()[0]})") from None
    return bool(settings.do_normalize), int(settings.sampling_rate)


def read_safetensors(folder: Path):
    """The folder's weights from model.safetensors (one file, or the shards its index names);
    pickled weights (pytorch_model.bin) are refused, never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / f"{WEIGHTS_FILE}.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    elif (folder / "pytorch_model.bin").is_file():
        raise HfInteropError(f"{folder}: holds pytorch_model.bin only, a pickle, which is never unpickled here; "
                             "save the model with safe_serialization=True (model.safetensors)")
    else:
        raise HfInteropError(f"{folder}: no {WEIGHTS_FILE}")
    weights = {}
    for name in files:
        try:
            weights.update(load_file(str(folder / name)))
        except (OSError, SafetensorError) as error:
            raise HfInteropError(f"{folder / name}: not readable safetensors ({error})") from None
    return weights


def hf_symbols(transformers, folder: Path, config):
    """(fairseq symbols, HF row of each) of a CTC folder's tokenizer."""
    if not (folder / "vocab.json").is_file():
        raise HfInteropError(f"{folder}: a {CTC} folder without vocab.json; save its tokenizer (processor) into it")
    tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(folder))
    vocabulary = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if len(vocabulary) != config["vocab_size"]:
        raise LayoutError(f"vocab.json has {len(vocabulary)} tokens, config.json vocab_size {config['vocab_size']}")
    if config.get("pad_token_id") is not None and vocabulary.get(tokenizer.pad_token) != config["pad_token_id"]:
        raise LayoutError(f"the CTC blank: config.json pad_token_id={config['pad_token_id']}, vocab.json "
                          f"{tokenizer.pad_token}={vocabulary.get(tokenizer.pad_token)}")
    special = {role: getattr(tokenizer, f"{role}_token") for role in ("pad", "bos", "eos", "unk")}
    return fairseq_symbols(vocabulary, special)


def fairseq_dictionary(symbols) -> Dictionary:
    dictionary = Dictionary()
    for symbol in symbols[len(dictionary.symbols):]:
        dictionary.add_symbol(symbol)
    if list(dictionary.symbols) != list(symbols):
        raise LayoutError(f"fairseq's dictionary cannot hold the symbols {symbols[:8]} ... in this order")
    return dictionary


def dictionary_text(dictionary: Dictionary) -> str:
    return "".join(f"{symbol} 1\n" for symbol in dictionary.symbols[dictionary.nspecial:])


def check_dictionary_beside(path: Path, dictionary: Dictionary):
    """The dict.ltr.txt the import writes beside the checkpoint may replace only an equal one."""
    if path.exists():
        try:
            same = list(Dictionary.load(str(path)).symbols) == list(dictionary.symbols)
        except (OSError, ValueError, RuntimeError):
            same = False
        if not same:
            raise HfInteropError(f"{path}: exists and holds another dictionary; write the checkpoint into another folder")
