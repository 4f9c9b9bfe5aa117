"""How a stock fairseq wav2vec2 model is laid out in HF transformers, in both directions: the names
of the weights, the config fields and the CTC vocabulary. Pure data (torch tensors, dicts, lists):
no fairseq and no transformers here, so the mapping can be read and tested on its own.

Both wav2vec2 implementations compute the same functions with the same tensors; only names differ,
with three exceptions this module handles:
- the positional convolution's weight norm: fairseq (torch's old `weight_norm`) stores
  `weight_g`/`weight_v`, transformers 5 builds torch's parametrization and stores
  `parametrizations.weight.original0`/`original1` (same tensors, new names);
- the CTC blank: fairseq's letter dictionary opens with `<s>`, `<pad>`, `</s>`, `<unk>` and CTC
  uses index 0 (`<s>`) as the blank, while HF's CTC blank is the pad token. So HF's vocabulary
  calls index 0 `<pad>` and index 1 `<s>`: the rows of the output layer stay where they are;
- HF always projects the convolutional features to the encoder width, fairseq only when the
  widths differ (`post_extract_proj`).
"""
import ast
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

CTC_ENCODER_PREFIX = "w2v_encoder.w2v_model."
"""Where a fairseq CTC model (stock `wav2vec_ctc`) keeps its wav2vec2 model."""
CTC_OUTPUT_PREFIX = "w2v_encoder.proj."
HF_BODY_PREFIX = "wav2vec2."
"""Where HF's Wav2Vec2ForCTC and Wav2Vec2ForPreTraining keep their Wav2Vec2Model."""
HF_OUTPUT_PREFIX = "lm_head."
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
"""The four symbols every fairseq dictionary opens with, in fairseq's order (bos, pad, eos, unk)."""
HF_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
"""The names HF gives the same four rows: the CTC blank (fairseq's row 0) is HF's pad token."""
WORD_DELIMITER = "|"

BODY_NAMES = (
    ("mask_emb", "masked_spec_embed"),
    ("feature_extractor.conv_layers.{}.0.{}", "feature_extractor.conv_layers.{}.conv.{}"),
    ("feature_extractor.conv_layers.{}.2.{}", "feature_extractor.conv_layers.{}.layer_norm.{}"),
    ("feature_extractor.conv_layers.{}.2.1.{}", "feature_extractor.conv_layers.{}.layer_norm.{}"),
    ("layer_norm.{}", "feature_projection.layer_norm.{}"),
    ("post_extract_proj.{}", "feature_projection.projection.{}"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias"),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("encoder.layers.{}.self_attn.{}.{}", "encoder.layers.{}.attention.{}.{}"),
    ("encoder.layers.{}.self_attn_layer_norm.{}", "encoder.layers.{}.layer_norm.{}"),
    ("encoder.layers.{}.fc1.{}", "encoder.layers.{}.feed_forward.intermediate_dense.{}"),
    ("encoder.layers.{}.fc2.{}", "encoder.layers.{}.feed_forward.output_dense.{}"),
    ("encoder.layers.{}.final_layer_norm.{}", "encoder.layers.{}.final_layer_norm.{}"),
    ("encoder.layer_norm.{}", "encoder.layer_norm.{}"),
)
"""fairseq name -> HF name inside the wav2vec2 model; each {} is one dot-free part, the same on
both sides. The feature extractor's norms are `conv_layers.N.2` (group norm, layer 0 of BASE's
extractor) or `conv_layers.N.2.1` (layer norm between two transposes, every layer of XLS-R's); HF
calls both `layer_norm`. The names are checked against the model each side builds from the config,
so a name that fits a pattern but not the model is caught there."""
PRETRAINING_HEAD_NAMES = (
    ("quantizer.vars", "quantizer.codevectors"),
    ("quantizer.weight_proj.{}", "quantizer.weight_proj.{}"),
    ("project_q.{}", "project_q.{}"),
    ("final_proj.{}", "project_hid.{}"),
)
"""fairseq name -> HF name of the pieces only contrastive pretraining uses (HF keeps them beside
`wav2vec2.`, not inside it)."""
PRETRAINING_HEAD_KEYS = ("quantizer.", "project_q.", "final_proj.")
HF_PRETRAINING_HEAD_KEYS = ("quantizer.", "project_q.", "project_hid.")


class LayoutError(ValueError):
    """A weight, config value or vocabulary HF's wav2vec2 cannot hold (or fairseq's, importing)."""


def _pattern(template: str):
    return re.compile(re.escape(template).replace(re.escape("{}"), "([^.]+)"))


_TO_HF = [(_pattern(fairseq), hf) for fairseq, hf in BODY_NAMES + PRETRAINING_HEAD_NAMES]
_TO_FAIRSEQ = [(_pattern(hf), fairseq) for fairseq, hf in BODY_NAMES + PRETRAINING_HEAD_NAMES]


def _renamed(name: str, table) -> List[str]:
    """Every name `name` maps to under `table` (two only for HF's feature-extractor norms)."""
    return [template.format(*pattern.fullmatch(name).groups()) for pattern, template in table
            if pattern.fullmatch(name)]


def has_quantizer(fairseq_state: Mapping) -> bool:
    return any(key.startswith("quantizer.") for key in fairseq_state)


def hf_state(fairseq_state: Mapping, ctc: bool) -> Dict:
    """The HF state dict (Wav2Vec2ForCTC when `ctc`, else Wav2Vec2ForPreTraining, or Wav2Vec2Model
    for a pretraining model without a quantizer) of a stock fairseq state dict: the same tensors
    under HF's names. A pretraining model's heads without a quantizer are left out (dropped_heads)."""
    body_prefix = CTC_ENCODER_PREFIX if ctc else ""
    with_heads = not ctc and has_quantizer(fairseq_state)
    hf_prefix = HF_BODY_PREFIX if ctc or with_heads else ""
    converted = {}
    dropped = set(dropped_heads(fairseq_state, ctc))
    for name, tensor in fairseq_state.items():
        if ctc and name.startswith(CTC_OUTPUT_PREFIX):
            converted[HF_OUTPUT_PREFIX + name[len(CTC_OUTPUT_PREFIX):]] = tensor
            continue
        if name in dropped:
            continue
        relative = name[len(body_prefix):] if name.startswith(body_prefix) else None
        if relative is not None:  # torch's newer weight norm names, as some fairseq builds save them
            relative = relative.replace(".parametrizations.weight.original0", ".weight_g").replace(
                ".parametrizations.weight.original1", ".weight_v")
        if relative is None:
            raise LayoutError(f"weight {name} has no counterpart in HF's wav2vec2")
        is_head = relative.startswith(PRETRAINING_HEAD_KEYS)
        converted[("" if is_head else hf_prefix) + hf_body_name(relative)] = tensor
    return converted


def hf_body_name(name: str) -> str:
    """The HF name of `name`, a tensor of fairseq's wav2vec2 model (`encoder.layers.0.fc1.weight`),
    inside HF's (`encoder.layers.0.feed_forward.intermediate_dense.weight`)."""
    targets = _renamed(name, _TO_HF)
    if not targets:
        raise LayoutError(f"weight {name} has no counterpart in HF's wav2vec2")
    return targets[0]


def dropped_heads(fairseq_state: Mapping, ctc: bool) -> List[str]:
    """The weights hf_state leaves out: a pretraining model without a quantizer keeps projections
    (project_q, final_proj) that HF's Wav2Vec2ForPreTraining holds only beside a quantizer; they
    serve the contrastive loss only, never fine-tuning or inference."""
    if ctc or has_quantizer(fairseq_state):
        return []
    return sorted(key for key in fairseq_state if key.startswith(PRETRAINING_HEAD_KEYS))


def fairseq_state(hf_weights: Mapping, ctc: bool, layer_norm_extractor: bool) -> Dict:
    """The stock fairseq state dict (CTC when `ctc`, else pretraining) of HF weights of
    Wav2Vec2ForCTC, Wav2Vec2ForPreTraining or Wav2Vec2Model: the same tensors under fairseq's
    names, the positional convolution's weight norm as weight_g/weight_v. A CTC model's
    pretraining heads, if saved, are left out (fairseq's CTC model has none)."""
    body_prefix = CTC_ENCODER_PREFIX if ctc else ""
    converted = {}
    for name, tensor in hf_weights.items():
        if ctc and name.startswith(HF_OUTPUT_PREFIX):
            converted[CTC_OUTPUT_PREFIX + name[len(HF_OUTPUT_PREFIX):]] = tensor
            continue
        if ctc and name.startswith(HF_PRETRAINING_HEAD_KEYS):
            continue
        relative = name[len(HF_BODY_PREFIX):] if name.startswith(HF_BODY_PREFIX) else name
        relative = relative.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1")
        targets = _renamed(relative, _TO_FAIRSEQ)
        if len(targets) > 1:  # a feature-extractor norm: group norm at `.2`, layer norm at `.2.1`
            targets = [target for target in targets if (".2.1." in target) == layer_norm_extractor]
        if not targets:
            raise LayoutError(f"weight {name} has no counterpart in fairseq's wav2vec2")
        is_head = name.startswith(HF_PRETRAINING_HEAD_KEYS)
        converted[("" if is_head else body_prefix) + targets[0]] = tensor
    return converted


# ----------------------------------------------------------------------------------------- config

ACTIVATIONS = ("gelu", "relu")
"""Activations both implementations spell the same way and compute alike."""
DROPOUT_FIELDS = (
    ("dropout", "hidden_dropout"), ("attention_dropout", "attention_dropout"),
    ("activation_dropout", "activation_dropout"), ("dropout_input", "feat_proj_dropout"),
    ("encoder_layerdrop", "layerdrop"), ("mask_prob", "mask_time_prob"), ("mask_length", "mask_time_length"),
    ("mask_channel_prob", "mask_feature_prob"), ("mask_channel_length", "mask_feature_length"),
)
"""Training-only settings of the wav2vec2 config: fairseq field -> HF field."""
CTC_DROPOUT_FIELDS = (
    ("dropout", "hidden_dropout"), ("attention_dropout", "attention_dropout"),
    ("activation_dropout", "activation_dropout"), ("dropout_input", "feat_proj_dropout"),
    ("layerdrop", "layerdrop"), ("mask_prob", "mask_time_prob"), ("mask_length", "mask_time_length"),
    ("mask_channel_prob", "mask_feature_prob"), ("mask_channel_length", "mask_feature_length"),
    ("final_dropout", "final_dropout"),
)
"""The same settings where a fine-tuned CTC model's config (`wav2vec_ctc`) keeps them."""


def conv_layers(spec: str) -> List[Tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` (a Python expression of (dim, kernel, stride) triples),
    read without evaluating code."""
    try:
        tree = ast.parse(spec, mode="eval").body
        layers = _literal_layers(tree)
    except (SyntaxError, ValueError, TypeError):
        raise LayoutError(f"conv_feature_layers={spec!r} is not a list of (dim, kernel, stride) triples") from None
    if not layers or any(len(layer) != 3 or not all(isinstance(v, int) for v in layer) for layer in layers):
        raise LayoutError(f"conv_feature_layers={spec!r} is not a list of (dim, kernel, stride) triples")
    return [tuple(layer) for layer in layers]


def _literal_layers(node):
    """Lists of tuples joined with + and repeated with *, the only operations the spec uses."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal_layers(node.left) + _literal_layers(node.right)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _literal_layers(node.left) * ast.literal_eval(node.right)
    value = ast.literal_eval(node)
    if not isinstance(value, list):
        raise ValueError(value)
    return value


def _require(condition: bool, setting: str, why: str):
    if not condition:
        raise LayoutError(f"{setting}: {why}")


def hf_config_fields(w2v: Mapping, has_projection: bool, pretraining_heads: bool,
                     training: Optional[Mapping] = None) -> Dict:
    """The Wav2Vec2Config fields of a fairseq wav2vec2 model config `w2v` (every field present:
    fairseq's defaults filled in). `training`: the CTC model's config, whose dropouts and
    masking replace the pretraining ones. Raises LayoutError for what HF's wav2vec2 lacks."""
    _require(w2v["layer_type"] == "transformer", f"model.layer_type={w2v['layer_type']}",
             "HF's Wav2Vec2 holds transformer layers only")
    _require(w2v["pos_conv_depth"] == 1, f"model.pos_conv_depth={w2v['pos_conv_depth']}",
             "HF's Wav2Vec2 has one positional convolution")
    _require(int(w2v.get("adp_num", -1)) <= 0, "model.adp_num", "HF's Wav2Vec2 has no per-layer adapters of fairseq's kind")
    _require(w2v["activation_fn"] in ACTIVATIONS, f"model.activation_fn={w2v['activation_fn']}",
             f"only {', '.join(ACTIVATIONS)} are computed alike by both")
    layers = conv_layers(w2v["conv_feature_layers"])
    _require(has_projection, "model.encoder_embed_dim",
             f"equals the feature extractor's width ({layers[-1][0]}), so fairseq has no post_extract_proj, "
             "which HF's Wav2Vec2 always has")
    fields = dict(
        model_type="wav2vec2",
        hidden_size=w2v["encoder_embed_dim"], num_hidden_layers=w2v["encoder_layers"],
        num_attention_heads=w2v["encoder_attention_heads"], intermediate_size=w2v["encoder_ffn_embed_dim"],
        hidden_act=w2v["activation_fn"], feat_extract_activation="gelu", layer_norm_eps=1e-5,
        feat_extract_norm="group" if w2v["extractor_mode"] == "default" else "layer",
        conv_dim=[layer[0] for layer in layers], conv_kernel=[layer[1] for layer in layers],
        conv_stride=[layer[2] for layer in layers], num_feat_extract_layers=len(layers), conv_bias=w2v["conv_bias"],
        num_conv_pos_embeddings=w2v["conv_pos"], num_conv_pos_embedding_groups=w2v["conv_pos_groups"],
        do_stable_layer_norm=w2v["layer_norm_first"], feat_proj_layer_norm=True,
    )
    fields.update({hf: w2v[name] for name, hf in DROPOUT_FIELDS})
    if training is not None:
        fields.update({hf: training[name] for name, hf in CTC_DROPOUT_FIELDS if name in training})
    if pretraining_heads:
        _require(not w2v["same_quantizer"] and not w2v["quantize_input"] and not w2v["target_glu"]
                 and w2v["quantizer_depth"] == 1, "model.quantize_input/same_quantizer/target_glu/quantizer_depth",
                 "HF's Wav2Vec2ForPreTraining has one single-layer quantizer of the targets only")
        final_dim = w2v["final_dim"] or w2v["encoder_embed_dim"]
        fields.update(num_codevector_groups=w2v["latent_groups"], num_codevectors_per_group=w2v["latent_vars"],
                      codevector_dim=w2v["latent_dim"] or final_dim, proj_codevector_dim=final_dim,
                      num_negatives=w2v["num_negatives"], contrastive_logits_temperature=w2v["logit_temp"])
    return fields


def fairseq_model_fields(hf: Mapping, pretraining_heads: bool) -> Dict:
    """The fairseq Wav2Vec2Config fields of an HF Wav2Vec2Config (a dict); LayoutError for what
    fairseq's wav2vec2 lacks."""
    _require(hf.get("model_type") == "wav2vec2", f"model_type={hf.get('model_type')}", "not a wav2vec2 model")
    _require(not hf.get("add_adapter"), "add_adapter=true", "fairseq's wav2vec2 has no output adapter")
    _require(hf.get("adapter_attn_dim") is None, f"adapter_attn_dim={hf.get('adapter_attn_dim')}",
             "fairseq's wav2vec2 has no attention adapters (MMS); load the adapter of one language and save it merged")
    _require(hf.get("feat_proj_layer_norm", True), "feat_proj_layer_norm=false", "fairseq always normalizes the features")
    _require(hf.get("feat_extract_activation", "gelu") == "gelu",
             f"feat_extract_activation={hf.get('feat_extract_activation')}", "fairseq's extractor uses gelu")
    _require(hf.get("hidden_act") in ACTIVATIONS, f"hidden_act={hf.get('hidden_act')}",
             f"only {', '.join(ACTIVATIONS)} are computed alike by both")
    _require(abs(hf.get("layer_norm_eps", 1e-5) - 1e-5) < 1e-12, f"layer_norm_eps={hf.get('layer_norm_eps')}",
             "fairseq's layer norms use 1e-5")
    _require(hf.get("feat_extract_norm") in ("group", "layer"), f"feat_extract_norm={hf.get('feat_extract_norm')}",
             "is neither group nor layer")
    triples = list(zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"]))
    fields = dict(
        extractor_mode="default" if hf["feat_extract_norm"] == "group" else "layer_norm",
        conv_feature_layers="[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in triples) + "]",
        conv_bias=bool(hf["conv_bias"]), layer_norm_first=bool(hf["do_stable_layer_norm"]),
        encoder_layers=hf["num_hidden_layers"], encoder_embed_dim=hf["hidden_size"],
        encoder_ffn_embed_dim=hf["intermediate_size"], encoder_attention_heads=hf["num_attention_heads"],
        activation_fn=hf["hidden_act"], conv_pos=hf["num_conv_pos_embeddings"],
        conv_pos_groups=hf["num_conv_pos_embedding_groups"],
    )
    fields.update({name: hf[field] for name, field in DROPOUT_FIELDS if field in hf})
    if pretraining_heads:
        fields.update(quantize_targets=True, latent_groups=hf["num_codevector_groups"],
                      latent_vars=hf["num_codevectors_per_group"], latent_dim=hf["codevector_dim"],
                      final_dim=hf["proj_codevector_dim"], num_negatives=hf.get("num_negatives", 100),
                      logit_temp=hf.get("contrastive_logits_temperature", 0.1))
    else:
        fields.update(quantize_targets=False)
    return fields


# ------------------------------------------------------------------------------------- vocabulary

def hf_vocabulary(symbols: Sequence[str]) -> Dict[str, int]:
    """HF's vocab.json of a fairseq dictionary's symbols: the same indices (so the output layer's
    rows need no reordering), with the first two specials renamed so that HF's pad token is
    fairseq's CTC blank."""
    symbols = list(symbols)
    _require(tuple(symbols[:4]) == FAIRSEQ_SPECIALS, "dictionary",
             f"opens with {symbols[:4]}, not fairseq's {list(FAIRSEQ_SPECIALS)}")
    duplicates = sorted({symbol for symbol in symbols[4:] if symbol in HF_SPECIALS or symbols.count(symbol) > 1})
    _require(not duplicates, "dictionary", f"repeats {duplicates}")
    return {symbol: index for index, symbol in enumerate(list(HF_SPECIALS) + symbols[4:])}


def fairseq_symbols(vocabulary: Mapping[str, int], special: Mapping[str, str]) -> Tuple[List[str], List[int]]:
    """(fairseq dictionary symbols, HF row of each) of HF's vocab.json, where `special` names HF's
    pad, bos, eos and unk tokens: fairseq's blank row (`<s>`, index 0) is HF's pad row, the other
    specials follow in fairseq's order, then every other token in HF's order."""
    rows = {index: token for token, index in vocabulary.items()}
    _require(sorted(rows) == list(range(len(vocabulary))), "vocab.json", "its indices are not 0..N-1 without gaps")
    missing = [f"{role}_token {special.get(role)!r}" for role in ("pad", "bos", "eos", "unk")
               if special.get(role) not in vocabulary]
    _require(not missing, "vocab.json", f"lacks {', '.join(missing)}; fairseq's dictionary needs all four specials")
    special_rows = [vocabulary[special[role]] for role in ("pad", "bos", "eos", "unk")]
    others = [index for index in sorted(rows) if index not in special_rows]
    unwritable = [rows[index] for index in others if not rows[index] or any(c.isspace() for c in rows[index])]
    _require(not unwritable, "vocab.json", f"tokens {unwritable!r} hold white space, which dict.ltr.txt cannot")
    clashing = [rows[index] for index in others if rows[index] in FAIRSEQ_SPECIALS]
    _require(not clashing, "vocab.json", f"tokens {clashing} are fairseq specials in other roles")
    return list(FAIRSEQ_SPECIALS) + [rows[index] for index in others], special_rows + others
