"""Per-language output layers and language selection (task `subnets_multilingual_finetuning`).

A multilingual model has either one output layer per language, each over that language's own
dictionary (`language_heads.<language>.*`; the stock `w2v_encoder.proj` is then absent), or the
stock output layer over the union of the languages' dictionaries. Every batch's `net_input` names
its language; the forward pass selects it, which picks its head and switches the encoder's
per-language masks (core.transforms.select_language). An optimizer step then leaves the other
languages' heads bit-identical (`held_through_step`): their gradient is zero, or None on one
rank, but Adam's momentum and weight decay would move them.

At build time the model records its languages, the output layer mode and the output sizes in its
own config (as fairseq's wav2vec2 records `w2v_args`), which fairseq saves in every checkpoint, so
fairseq-generate and export rebuild it from the checkpoint alone.
"""
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import OmegaConf, open_dict
from torch import nn

from ...core.transforms import select_language as select_language_masks
from ..extension import STOCK_OUTPUT_LAYER_PREFIX, Technique

HEADS_PREFIX = "language_heads."
LANGUAGE_KEY = "language"
"""The `net_input` entry naming a monolingual batch's language."""
MULTILINGUAL_MODEL_KEYS = ("languages", "language_output_layers", "language_output_sizes")
"""The model config keys this technique records; a single-language model has them unset."""


class UnknownLanguageError(ValueError):
    """A language the model was not trained on; the message lists the model's languages."""


@dataclass
class LanguageHeadsConfig:
    languages: Optional[List[str]] = field(
        default=None,
        metadata={"help": "written at build time by the subnets_multilingual_finetuning task and saved in "
                  "checkpoints: the model's languages. Leave unset."},
    )
    language_output_layers: Optional[str] = field(
        default=None,
        metadata={"help": "written at build time with languages: per_language or shared. Leave unset."},
    )
    language_output_sizes: Optional[List[int]] = field(
        default=None,
        metadata={"help": "written at build time with languages: output size of each language's layer, or "
                  "of the shared one. Leave unset."},
    )


class LanguageHeads(Technique):
    name = "language_heads"
    config = LanguageHeadsConfig
    recorded_keys = MULTILINGUAL_MODEL_KEYS

    @classmethod
    def enabling_key(cls, cfg, task=None):
        """On for a model with recorded languages, and for a first build by a multilingual task
        (which has an output layout to record)."""
        if cfg.get("languages") is not None or getattr(task, "output_layout", None) is not None:
            return "languages"
        return None

    def __init__(self, cfg):
        super().__init__(cfg)
        self.active_language = None
        self.heads = nn.ModuleDict()

    def add_structure(self, model, cfg, task):
        """Records the task's language layout in cfg on a first build, then builds the heads the
        recorded layout asks for."""
        if cfg.get("languages") is None:
            with open_dict(cfg):
                cfg.languages, cfg.language_output_layers, cfg.language_output_sizes = task.output_layout()
        model.languages = list(cfg.languages)
        if cfg.language_output_layers == "per_language":
            from fairseq.models.wav2vec.wav2vec2_asr import Linear  # fairseq's initialisation of the stock layer
            width = model.w2v_encoder.proj.in_features
            self.heads = nn.ModuleDict({language: Linear(width, size) for language, size
                                        in zip(model.languages, cfg.language_output_sizes)})
            model.language_heads = self.heads
            model.w2v_encoder.proj = None

    def select_language(self, model, language):
        """Makes `language` active: its output layer and its per-language encoder masks."""
        if language not in model.languages:
            raise UnknownLanguageError(f"language '{language}' is not one of this model's languages "
                                       f"({', '.join(model.languages)})")
        select_language_masks(model, language)
        self.active_language = language

    def take_forward_inputs(self, model, net_input):
        language = net_input.pop(LANGUAGE_KEY, None)
        if language is not None:
            self.select_language(model, language)
        elif len(self.heads) and self.active_language is None:
            raise UnknownLanguageError(
                f"this model has one output layer per language ({', '.join(model.languages)}): pass "
                f"net_input['{LANGUAGE_KEY}'] or call select_language first")

    def change_forward_output(self, model, net_output):
        if len(self.heads):
            net_output["encoder_out"] = self.heads[self.active_language](net_output["encoder_out"])
        return net_output

    def held_through_step(self, model):
        return [(parameter, None) for language, head in self.heads.items() if language != self.active_language
                for parameter in head.parameters() if parameter.requires_grad]

    def writes_parameters_after_steps(self, model):
        return len(self.heads) > 0


def single_language_state(model_state, model_cfg, language):
    """(state dict, model cfg) of the single-language model that `language` of a multilingual
    `subnets_wav2vec_ctc` model is: its head under the stock `w2v_encoder.proj.*` keys (a shared
    head stays where it is), the other heads dropped, the multilingual config keys removed.
    Encoder transforms are left as they are (export bakes them)."""
    cfg = OmegaConf.to_container(model_cfg) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    languages = list(cfg.get("languages") or [])
    if language not in languages:
        known = ", ".join(languages) or "none: it is a single-language model"
        raise UnknownLanguageError(f"language '{language}' is not one of the checkpoint's languages ({known})")
    state = {key: value for key, value in model_state.items() if not key.startswith(HEADS_PREFIX)}
    if cfg.get("language_output_layers") == "per_language":
        own_head = f"{HEADS_PREFIX}{language}."
        for key, value in model_state.items():
            if key.startswith(own_head):
                state[STOCK_OUTPUT_LAYER_PREFIX + key[len(own_head):]] = value
    for key in MULTILINGUAL_MODEL_KEYS:
        cfg.pop(key, None)
    return state, cfg


TECHNIQUE = LanguageHeads
