"""Starting a fine-tuning run from a fine-tuned CTC checkpoint (`model.init_from`).

The upstream model gives the encoder (its transforms baked into plain weights) and, per output
layer of the new model, the output layer that scores the same characters. Both sides may be
single-language or multilingual (the language_heads technique), which is what ASR Pathways needs: the
language-specific pruning runs and the pathways all start from one dense multilingual model θ0.

- A single-language run from a multilingual checkpoint names the language it continues
  (`model.init_from_language`): that language's head and, for a pathways model, the encoder under
  that language's masks.
- A multilingual run from a multilingual checkpoint takes each language's head from the same
  language; a language the checkpoint lacks gets a new head. Per-language encoder masks cannot be
  baked into one shared encoder, so such a checkpoint is refused here.
- A multilingual run from a single-language checkpoint may take that one output layer for every
  language whose dictionary it matches.

`model.init_output_layer` decides per output layer: `keep` (the shapes must match), `new`, or
`auto`: keep it exactly when the dictionaries' symbols are equal. A single-language checkpoint's
dictionary is fairseq's pickled `task_state.target_dictionary`; a multilingual one's are the symbol
lists its task records (`LANGUAGE_DICTIONARIES_KEY`), or a bundle's record. A bundle's languages
start a run as a multilingual checkpoint's do, each under its own masks.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from ...core.parametrize import bake_state_dict
from ...core.transforms import TransformError
from ...errors import PluginInputError
from ...techniques.extension import STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX
from ...techniques.language_heads import HEADS_PREFIX, UnknownLanguageError, single_language_state
from .bundles import bundle_dictionaries, expand_bundle_masks

LANGUAGE_DICTIONARIES_KEY = "language_dictionaries"
"""The task-state entry where a multilingual task records {language: dictionary symbols}."""
SINGLE = None
"""The output-layer key of a single-language model."""


class UpstreamCheckpointError(PluginInputError):
    """`init_from` names a checkpoint this model cannot start from; the message names the file."""


@dataclass(frozen=True)
class OutputLayer:
    """One output layer: where its parameters are in the state dict, and the symbols of the
    dictionary it scores (None when the checkpoint does not record them)."""
    prefix: str
    symbols: Optional[Tuple[str, ...]]


@dataclass
class Upstream:
    """What a run takes from an upstream checkpoint: the baked state and its output layers, keyed
    by language (SINGLE for a single-language checkpoint or the language a single-language run
    continues)."""
    path: str
    state: Dict
    output_layers: Dict[Optional[str], OutputLayer]

    def output_layer_for(self, language: Optional[str]) -> Optional[OutputLayer]:
        """The upstream layer that a new model's layer for `language` continues, if any."""
        if SINGLE in self.output_layers:
            return self.output_layers[SINGLE]
        return self.output_layers.get(language)


def recorded_symbols(dictionary) -> Optional[Tuple[str, ...]]:
    return None if dictionary is None else tuple(getattr(dictionary, "symbols", dictionary))


def read_upstream(checkpoint, path: str, language: Optional[str], multilingual_run: bool) -> Upstream:
    """The upstream of a run (multilingual or not) that continues `language` of the checkpoint
    (model.init_from_language; only for a single-language run from a multilingual checkpoint)."""
    model_cfg = (checkpoint.get("cfg") or {}).get("model") or {}
    model_cfg = OmegaConf.to_container(model_cfg) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    task_state = checkpoint.get("task_state") or {}
    state = expand_bundle_masks(checkpoint["model"])  # a bundle's per-language masks, as the model holds them
    languages = list(model_cfg.get("languages") or [])
    if not languages:
        if language is not None:
            raise UpstreamCheckpointError(f"model.init_from_language={language}: {path} is a single-language "
                                          "model; the key picks one language of a multilingual checkpoint")
        layers = {SINGLE: OutputLayer(STOCK_OUTPUT_LAYER_PREFIX,
                                      recorded_symbols(task_state.get("target_dictionary")))}
        return Upstream(path, baked(state, path, None), layers)
    dictionaries = task_state.get(LANGUAGE_DICTIONARIES_KEY) or bundle_dictionaries(checkpoint)
    if multilingual_run:
        if language is not None:
            raise UpstreamCheckpointError(f"model.init_from_language={language}: this run is multilingual and takes "
                                          "every language of the checkpoint; the key is for a single-language run")
        per_language = model_cfg.get("language_output_layers") == "per_language"
        layers = {name: OutputLayer(f"{HEADS_PREFIX}{name}." if per_language else STOCK_OUTPUT_LAYER_PREFIX,
                                    recorded_symbols(dictionaries.get(name))) for name in languages}
        return Upstream(path, baked(state, path, None), layers)
    if language is None:
        raise UpstreamCheckpointError(f"model.init_from: {path} is a multilingual model ({', '.join(languages)}); "
                                      "name the language this single-language run continues with "
                                      "+model.init_from_language")
    try:
        state, _ = single_language_state(state, model_cfg, language)
    except UnknownLanguageError as error:
        raise UpstreamCheckpointError(f"model.init_from_language: {path}: {error}") from None
    layers = {SINGLE: OutputLayer(STOCK_OUTPUT_LAYER_PREFIX, recorded_symbols(dictionaries.get(language)))}
    return Upstream(path, baked(state, path, language), layers)


def baked(state, path: str, language: Optional[str]):
    """The state with every transform baked (`language` picks per-language masks)."""
    try:
        return bake_state_dict(state, language=language)
    except TransformError as error:
        raise UpstreamCheckpointError(
            f"model.init_from: {path}: {error}; per-language masks differ by language, so a multilingual run "
            "cannot start from them (export one language, or start a single-language run with "
            "+model.init_from_language)") from None


def continued_state(state: Dict, output_layers: Dict[Optional[str], OutputLayer], upstream: Upstream,
                    choice: str) -> Tuple[Dict, Sequence[Optional[str]]]:
    """`state` (the new model's) with the upstream encoder and, per `choice` (init_output_layer),
    the upstream output layers copied in; returns it and the languages (SINGLE included) whose
    output layer was kept."""
    copied = {key: key for key in state if key.startswith(W2V_PREFIX)}
    kept = []
    for language, layer in output_layers.items():
        source = upstream.output_layer_for(language)
        if not keeps_output_layer(choice, layer, source, upstream.path, language):
            continue
        kept.append(language)
        copied.update({key: source.prefix + key[len(layer.prefix):] for key in state if key.startswith(layer.prefix)})
    for key, source_key in copied.items():
        if source_key not in upstream.state:
            raise UpstreamCheckpointError(f"{upstream.path}: has no {source_key}; is it a wav2vec2 CTC checkpoint?")
        if upstream.state[source_key].shape != state[key].shape:
            raise UpstreamCheckpointError(
                f"{upstream.path}: {source_key} has shape {tuple(upstream.state[source_key].shape)}, this model's "
                f"{key} {tuple(state[key].shape)} (init_output_layer=new starts a fresh output layer)")
        state[key] = upstream.state[source_key]
    return state, kept


def keeps_output_layer(choice: str, layer: OutputLayer, source: Optional[OutputLayer], path: str,
                       language: Optional[str]) -> bool:
    """Whether `layer` starts from `source` under init_output_layer=`choice`."""
    if choice == "new":
        return False
    if source is None:
        if choice == "keep":
            raise UpstreamCheckpointError(f"{path}: has no output layer for language {language!r}; set "
                                          "model.init_output_layer=auto or new")
        return False
    if choice == "keep":
        return True
    if source.symbols is None:
        raise UpstreamCheckpointError(
            f"{path}: holds no target dictionary (task_state), so init_output_layer=auto cannot tell "
            "whether the character sets match; set model.init_output_layer=keep or new")
    return source.symbols == layer.symbols


def output_layers(model, task) -> Dict[Optional[str], OutputLayer]:
    """{language: OutputLayer} of a host model built for `task` (SINGLE for a single-language
    model), with the symbols of the dictionary each layer scores."""
    if not model.languages:
        return {SINGLE: OutputLayer(STOCK_OUTPUT_LAYER_PREFIX, tuple(task.target_dictionary.symbols))}
    per_language = model.w2v_encoder.proj is None
    return {language: OutputLayer(f"{HEADS_PREFIX}{language}." if per_language else STOCK_OUTPUT_LAYER_PREFIX,
                                  tuple(task.language_dictionaries[language].symbols))
            for language in model.languages}
