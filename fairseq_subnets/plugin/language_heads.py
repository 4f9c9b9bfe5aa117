"""Per-language output layers and language selection for `subnets_wav2vec_ctc`.

A multilingual model (task `subnets_multilingual_finetuning`) has either one output layer per
language, each over that language's own dictionary (`language_heads.<language>.*`; the stock
`w2v_encoder.proj` is then absent), or the stock output layer over the union of the languages'
dictionaries. Every batch's `net_input` names its language; the forward pass selects it, which
picks its head and switches the encoder's per-language masks (core.transforms.select_language).
An optimizer step then changes only that language's pathway: the shared weights inside its masks,
its own head, and the weights no language mask covers (`held_through_step`).

At build time the model records its languages, the output layer mode and the output sizes in its
own config (as fairseq's wav2vec2 records `w2v_args`), which fairseq saves in every checkpoint, so
fairseq-generate and export rebuild it from the checkpoint alone.
"""
from fairseq.models.wav2vec.wav2vec2_asr import Linear
from omegaconf import OmegaConf, open_dict
from torch import nn

from ..core.pathways import outside_active_language_masks
from ..core.transforms import select_language as select_language_masks
from .errors import PluginInputError
from .multilingual_data import LANGUAGE_KEY

W2V_PREFIX = "w2v_encoder.w2v_model."
"""Where the wav2vec2 model sits inside the CTC model; mask names are relative to it."""
HEADS_PREFIX = "language_heads."
STOCK_OUTPUT_LAYER_PREFIX = "w2v_encoder.proj."
MULTILINGUAL_MODEL_KEYS = ("languages", "language_output_layers", "language_output_sizes")
"""The model config keys this module records; a single-language model has them unset."""


def parse_language_entries(entries, separator: str, where: str, form: str):
    """[LANGUAGE<separator>VALUE, ...] -> {language: value}, refusing malformed and repeated
    entries with a PluginInputError naming `where` (a config key or a command) and the `form`."""
    values = {}
    for entry in entries:
        language, found, value = str(entry).partition(separator)
        if not found or not language or not value:
            raise PluginInputError(f"{where} entry {entry!r}: expected {form}")
        if language in values:
            raise PluginInputError(f"{where} names language {language!r} twice")
        values[language] = value
    return values


class UnknownLanguageError(ValueError):
    """A language the model was not trained on; the message lists the model's languages."""


class LanguageHeadsMixin:
    """Mixed into the CTC model before `Wav2VecCtc` (it overrides forward)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.languages = []
        self.active_language = None
        self.language_heads = nn.ModuleDict()

    def build_language_heads(self, cfg, task):
        """Records the task's language layout in cfg on a first build (a task without languages
        leaves the model single-language), then builds the heads the recorded layout asks for."""
        if cfg.get("languages") is None:
            output_layout = getattr(task, "output_layout", None)
            if output_layout is None:
                return
            with open_dict(cfg):
                cfg.languages, cfg.language_output_layers, cfg.language_output_sizes = output_layout()
        self.languages = list(cfg.languages)
        if cfg.language_output_layers == "per_language":
            width = self.w2v_encoder.proj.in_features
            self.language_heads = nn.ModuleDict({language: Linear(width, size) for language, size
                                                 in zip(self.languages, cfg.language_output_sizes)})
            self.w2v_encoder.proj = None

    def select_language(self, language):
        """Makes `language` active: its output layer and its per-language encoder masks."""
        if language not in self.languages:
            known = ", ".join(self.languages) or "none: it is a single-language model"
            raise UnknownLanguageError(f"language '{language}' is not one of this model's languages ({known})")
        select_language_masks(self, language)
        self.active_language = language

    def held_through_step(self):
        """What an optimizer step on the active language's batch must leave bit-identical: the
        shared weights outside its per-language masks, and the other languages' output layers
        (their gradient is zero, or None on one rank, but Adam's momentum and weight decay would
        move them; core.pathways)."""
        held = outside_active_language_masks(self)
        for language, head in self.language_heads.items():
            if language != self.active_language:
                held.extend((parameter, None) for parameter in head.parameters() if parameter.requires_grad)
        return held

    def forward(self, **kwargs):
        language = kwargs.pop(LANGUAGE_KEY, None)
        if language is not None:
            self.select_language(language)
        elif len(self.language_heads) and self.active_language is None:
            raise UnknownLanguageError(
                f"this model has one output layer per language ({', '.join(self.languages)}): pass "
                f"net_input['{LANGUAGE_KEY}'] or call select_language first")
        net_output = super().forward(**kwargs)
        if len(self.language_heads):
            net_output["encoder_out"] = self.language_heads[self.active_language](net_output["encoder_out"])
        return net_output


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
