"""Target selection strings and wav2vec2 weight names of pretrained and fine-tuned checkpoints."""
import pytest
import torch

from fairseq_subnets.core.targets import (
    TargetSelection,
    format_layers,
    model_prefix,
    num_encoder_layers,
    parse_kinds,
    parse_layers,
    parse_weight_name,
    relative_weight_names,
    select_weights,
    weight_name,
)


@pytest.mark.parametrize("text,expected", [
    ("all", ("q", "k", "v", "out", "fc1", "fc2")), ("ffn", ("fc1", "fc2")), ("attn", ("q", "k", "v", "out")),
    ("fc2,q", ("q", "fc2")), ("attn, fc1", ("q", "k", "v", "out", "fc1")), ("v,v", ("v",)),
])
def test_parse_kinds(text, expected):
    assert parse_kinds(text) == expected


def test_parse_kinds_names_the_unknown_kind():
    with pytest.raises(ValueError, match="unknown module kind 'mlp'"):
        parse_kinds("ffn,mlp")


@pytest.mark.parametrize("text,expected", [
    ("all", None), ("0-3", (0, 1, 2, 3)), ("0,3,5", (0, 3, 5)), ("8-9,0-1", (0, 1, 8, 9)), ("4", (4,)),
])
def test_parse_and_format_layers(text, expected):
    assert parse_layers(text) == expected
    assert parse_layers(format_layers(expected)) == expected


@pytest.mark.parametrize("text", ["3-1", "a", "1-", "-1", ""])
def test_parse_layers_rejects(text):
    with pytest.raises(ValueError, match="layers"):
        parse_layers(text)


def test_selection_names_in_layer_major_order_and_range_check():
    selection = TargetSelection.parse("ffn", "1,3")
    assert selection.names(4) == ("encoder.layers.1.fc1.weight", "encoder.layers.1.fc2.weight",
                                  "encoder.layers.3.fc1.weight", "encoder.layers.3.fc2.weight")
    assert (selection.targets_text(), selection.layers_text()) == ("fc1,fc2", "1,3")
    assert len(TargetSelection().names(24)) == 144
    with pytest.raises(ValueError, match="layer 3 is selected but the model has 2 encoder layers"):
        selection.names(2)


def test_selection_errors_name_the_callers_keys_and_selects_in_models_of_any_depth():
    keys = ("model.mask_targets", "model.mask_layers")
    with pytest.raises(ValueError, match="^model.mask_targets: unknown module kind 'mlp'"):
        TargetSelection.parse("mlp", "all", keys=keys)
    with pytest.raises(ValueError, match="^model.mask_layers: cannot read 'x'"):
        TargetSelection.parse("all", "x", keys=keys)
    selection = TargetSelection.parse("ffn", "1,3", keys=keys)
    with pytest.raises(ValueError, match="^model.mask_layers: layer 3 is selected but the model has 2"):
        selection.names(2)
    assert selection.selects("encoder.layers.3.fc2.weight") and not selection.selects("encoder.layers.2.fc2.weight")
    assert not selection.selects("encoder.layers.1.self_attn.q_proj.weight")
    assert selection.selects("decoder.whatever.weight")  # not a prunable weight: reported, never dropped


def test_weight_names_round_trip():
    assert weight_name(3, "out") == "encoder.layers.3.self_attn.out_proj.weight"
    assert parse_weight_name("encoder.layers.3.self_attn.out_proj.weight") == (3, "out")
    assert parse_weight_name("encoder.layers.3.self_attn.out_proj.bias") is None
    assert parse_weight_name("encoder.pos_conv.0.weight_v") is None


def state(prefix, layers=2):
    entries = {f"{prefix}encoder.pos_conv.0.weight_v": torch.zeros(1), f"{prefix}encoder.layer_norm.weight": torch.zeros(1)}
    for layer in range(layers):
        for kind, shape in [("q", (4, 4)), ("k", (4, 4)), ("v", (4, 4)), ("out", (4, 4)), ("fc1", (8, 4)), ("fc2", (4, 8))]:
            name = weight_name(layer, kind)
            entries[prefix + name] = torch.full(shape, float(layer))
            entries[prefix + name[: -len("weight")] + "bias"] = torch.zeros(shape[0])
    return entries


def test_pretrained_and_finetuned_names_map_to_the_same_relative_names():
    pretrained, finetuned = state(""), state("w2v_encoder.w2v_model.")
    assert model_prefix(pretrained) == "" and model_prefix(finetuned) == "w2v_encoder.w2v_model."
    assert list(select_weights(pretrained)) == list(select_weights(finetuned)) == list(TargetSelection().names(2))
    assert num_encoder_layers(relative_weight_names(finetuned)) == 2
    selected = select_weights(finetuned, TargetSelection.parse("q", "1"))
    assert list(selected) == ["encoder.layers.1.self_attn.q_proj.weight"]
    assert selected["encoder.layers.1.self_attn.q_proj.weight"] is finetuned[
        "w2v_encoder.w2v_model.encoder.layers.1.self_attn.q_proj.weight"]


def test_parametrized_keys_map_to_weight_names_and_must_be_baked_before_selection():
    masked = state("w2v_encoder.w2v_model.")
    key = "w2v_encoder.w2v_model.encoder.layers.0.fc1"
    masked[f"{key}.parametrizations.weight.original"] = masked.pop(f"{key}.weight")
    masked[f"{key}.parametrizations.weight.0.mask"] = torch.ones(8, 4, dtype=torch.bool)
    assert relative_weight_names(masked)["encoder.layers.0.fc1.weight"] == f"{key}.parametrizations.weight.original"
    with pytest.raises(ValueError, match="parametrized weight .*bake it first"):
        select_weights(masked)


def test_missing_or_ambiguous_encoder_is_an_error():
    with pytest.raises(ValueError, match="cannot find one wav2vec2 encoder"):
        model_prefix(["decoder.embed_tokens.weight"])
    with pytest.raises(ValueError, match="cannot find one wav2vec2 encoder"):
        model_prefix(list(state("a.")) + list(state("b.")))
    partial = state("")
    del partial["encoder.layers.1.fc2.weight"]
    with pytest.raises(ValueError, match="no weight for 'encoder.layers.1.fc2.weight'"):
        select_weights(partial)

