"""`fairseq-subnets bench-train` on a tiny model: what it checks and reports, never how fast."""
import json
import math

import pytest
import torch

SMALL = dict(layers=2, width=64, ffn=128, seconds=0.25, train_steps=2, train_warmup=1, decode_steps=2, decode_warmup=1)
SMALL_ARGS = ["--layers", "2", "--width", "64", "--ffn", "128", "--seconds", "0.25", "--train-steps", "2",
              "--train-warmup", "1", "--decode-steps", "2", "--decode-warmup", "1"]


@pytest.fixture(scope="module")
def bench():
    from fairseq_subnets.plugin import step_benchmark

    return step_benchmark


@pytest.fixture(scope="module")
def result(bench):
    return bench.run_step_benchmark(bench.StepBenchSettings(**SMALL), say=lambda message: None)


def test_every_row_has_a_positive_finite_ratio_of_medians(result):
    for row in (result["train"], result["decode"], result["decode_masked"]):
        assert len(row["reference_s"]) == len(row["measured_s"]) == 2
        assert all(seconds > 0 for seconds in row["reference_s"] + row["measured_s"])
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert row["ratio"] == pytest.approx(row["measured_median_s"] / row["reference_median_s"])
        assert 0 < row["pair_ratio_min"] <= row["pair_ratio_max"]
    assert result["train"]["reference"] == "unmasked" and result["train"]["measured"] == "masked"
    assert result["decode"]["reference"] == "stock (exported)" and result["decode"]["measured"] == "baked"


def test_masked_training_keeps_pruned_weights_zero_and_baked_decoding_equals_stock(result):
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert result["prunable_weights"] == 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert result["pruned_nonzero_after_training"] == 0
    pruned = round(0.9 * result["prunable_weights"])
    assert result["optimized_values"]["masked"] == result["optimized_values"]["unmasked"] - pruned
    assert result["decode_outputs_equal"] is True
    assert result["masked_max_abs_difference"] < 1e-4
    losses = result["train"]["losses"]
    assert len(losses["unmasked"]) == len(losses["masked"]) == 3  # warm-up step included
    assert all(math.isfinite(loss) for values in losses.values() for loss in values)


def test_masked_training_steps_move_kept_weights_only(bench):
    from fairseq_subnets.core.parametrize import bake_module

    settings = bench.StepBenchSettings(**SMALL)
    torch.manual_seed(0)
    model = bench._build(settings)
    masks = bench._prune_masks(model, settings.sparsity)
    bench._apply_as_plugin(model, masks, settings.sparsity)
    name = "encoder.layers.0.fc1.weight"
    module = model.get_submodule(bench.W2V_PREFIX + "encoder.layers.0.fc1")
    before = module.weight.detach().clone()
    optimizer = bench.make_optimizer(model, lr=1e-3)
    batch = bench.make_batch(settings, torch.Generator().manual_seed(0))
    for _ in range(2):
        bench.train_step(model, optimizer, batch)
    after = module.weight.detach()
    assert not torch.equal(after[masks[name]], before[masks[name]])
    assert bench.pruned_nonzero(model, masks) == 0
    bake_module(model)  # the check reads the effective weight, so it sees a pruned weight come back
    with torch.no_grad():
        module.weight[~masks[name]] = 1.0
    assert bench.pruned_nonzero(model, masks) == int((~masks[name]).sum())


def test_interleaved_alternates_and_drops_the_warmup(bench):
    calls = []
    seconds = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, steps=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert {name: len(values) for name, values in seconds.items()} == {"a": 2, "b": 2}


def test_cli_prints_parseable_json(capsys):
    from fairseq_subnets.cli.main import main

    assert main(["bench-train", *SMALL_ARGS, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["settings"]["layers"] == 2 and payload["settings"]["threads"] == 1
    assert payload["decode_outputs_equal"] is True and payload["pruned_nonzero_after_training"] == 0
    assert all(math.isfinite(payload[row]["ratio"]) for row in ("train", "decode", "decode_masked"))


def test_cli_rejects_bad_settings(capsys):
    from fairseq_subnets.cli.main import main

    assert main(["bench-train", "--quick", "--sparsity", "1.5"]) == 2
    assert "sparsity" in capsys.readouterr().err
