"""`fairseq-subnets bench train` on a tiny model: what it checks and reports, never how fast."""
import contextlib
import io
import json
import math

import pytest
import torch

from factory import TINY, ctc_model

SMALL = dict(TINY, seconds=0.25, train_steps=2, train_warmup=1, decode_steps=2, decode_warmup=1)
SMALL_ARGS = ["--layers", "2", "--width", "64", "--ffn", "128", "--seconds", "0.25", "--train-steps", "2",
              "--train-warmup", "1", "--decode-steps", "2", "--decode-warmup", "1"]
"""SMALL on the command line."""
FAILING = dict(SMALL, train_steps=1, train_warmup=0, decode_steps=1, decode_warmup=0)
"""The fewest steps a run can take: the runs that must fail stop at a check made whatever the count."""


@pytest.fixture(scope="module")
def bench():
    from fairseq_subnets.benchmarks import train_step

    return train_step


@pytest.fixture(scope="module")
def result():
    """The JSON that `bench train --json` prints at SMALL: one run serves the CLI's test and every
    test of what the benchmark measures."""
    from fairseq_subnets.cli.main import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["bench", "train", *SMALL_ARGS, "--json"]) == 0
    return json.loads(printed.getvalue())


def test_every_comparison_has_a_positive_finite_ratio_of_medians_against_its_reference(bench, result):
    assert [row.key for row in bench.COMPARISONS] == ["train", "train_dense", "train_switch", "train_pathways",
                                                      "train_group_lasso", "pruning_event", "train_learned",
                                                      "train_full_sort", "train_learned_vs_full_sort", "decode",
                                                      "decode_masked", "decode_learned"]
    for comparison in bench.COMPARISONS:
        row = result[comparison.key]
        assert (row["reference"], row["measured"]) == (comparison.reference, comparison.measured)
        assert len(row["reference_s"]) == len(row["measured_s"]) == 2
        assert all(seconds > 0 for seconds in row["reference_s"] + row["measured_s"])
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert row["ratio"] == pytest.approx(row["measured_median_s"] / row["reference_median_s"])
        assert 0 < row["pair_ratio_min"] <= row["pair_ratio_max"]
    assert result["train"]["reference"] == "no mask" and result["decode"]["reference"] == "stock export"
    assert result["train_learned"]["reference"] == result["train_full_sort"]["reference"] == "no mask"
    assert result["train_learned_vs_full_sort"]["measured"] == result["train_learned"]["measured"]
    report = bench.format_step_report(result)
    assert all(comparison.label in report for comparison in bench.COMPARISONS)


def test_masked_training_keeps_pruned_weights_zero_and_stores_only_kept_weights(result):
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert result["prunable_weights"] == 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert result["pruned_nonzero_after_training"] == 0
    pruned = round(0.9 * result["prunable_weights"])
    assert result["optimized_values"]["fixed mask"] == result["optimized_values"]["no mask"] - pruned
    assert result["optimized_values"]["dense mask"] == result["optimized_values"]["no mask"]
    assert result["masked_max_abs_difference"] < 1e-4
    losses = result["train_losses"]
    assert len(losses["no mask"]) == len(losses["fixed mask"]) == len(losses["switching languages"]) == 3  # with warm-up
    assert len(losses["pathways"]) == len(losses["group lasso"]) == 3
    assert all(math.isfinite(loss) for values in losses.values() for loss in values)


def test_pathway_training_holds_the_weights_outside_every_mask_and_group_lasso_adds_to_the_loss(result):
    """The benchmark fails unless the weights outside both languages' masks stay (checked in the
    run); the group-lasso term the timed model trains with starts at strength x the block count
    (lambda_i = strength / the mean block norm of matrix i)."""
    assert result["pathway_weights_outside_every_mask"] > 0
    assert result["group_lasso_initial_term"] == pytest.approx(1e-4 * (result["prunable_weights"] // 8), rel=1e-5)


def test_learned_mask_models_optimize_only_scores_and_head_and_decode_close_to_the_export_as_loaded(result):
    optimized = result["optimized_values"]
    ffn_weights = 2 * 2 * 64 * 128
    head = 64 * 32 + 32
    assert optimized["learned mask"] == optimized["learned mask, full sort"] == ffn_weights + head
    assert len(result["train_losses"]["learned mask, full sort"]) == 3
    assert result["full_sort_threshold_ties"] == 0
    assert result["learned_unfrozen_export_max_abs_difference"] < 1e-4  # identical when frozen alike, or the run fails


def test_full_sort_binarisation_keeps_the_same_weights_as_the_threshold_search(bench):
    from fairseq_subnets.techniques.learned_masks.layer import binarise_scores

    scores = torch.randn(48, 40, generator=torch.Generator().manual_seed(0))
    for n_pruned in (0, 1, 192, 1919, 1920):
        assert torch.equal(bench.full_sort_kept(scores, n_pruned), binarise_scores(scores, n_pruned))


def test_the_run_fails_when_the_binarisations_keep_different_weights(bench, monkeypatch):
    full_sort_kept = bench.full_sort_kept
    monkeypatch.setattr(bench, "full_sort_kept", lambda scores, n_pruned: full_sort_kept(scores, n_pruned + 1))
    with pytest.raises(AssertionError, match="binarisations keep different scores"):
        bench.run_step_benchmark(bench.StepBenchSettings(**FAILING), say=lambda message: None)


def test_the_run_fails_when_baked_and_stock_outputs_differ(bench, monkeypatch):
    from fairseq_subnets.core.parametrize import bake_module

    def bake_then_nudge(model):
        bake_module(model)
        with torch.no_grad():
            model.w2v_encoder.proj.weight[0, 0] += 1.0

    monkeypatch.setattr(bench, "bake_module", bake_then_nudge)
    with pytest.raises(AssertionError, match="baked and stock decoding outputs differ"):
        bench.run_step_benchmark(bench.StepBenchSettings(**FAILING), say=lambda message: None)


def test_masked_training_steps_move_kept_weights_only(bench):
    from fairseq_subnets.core.parametrize import bake_module
    from fairseq_subnets.plugin.components.models import W2V_PREFIX
    from fairseq_subnets.benchmarks.untrained import fix_masks_as_mask_path_does

    settings = bench.StepBenchSettings(**SMALL)
    model = ctc_model(seed=0)
    masks = bench.prune_masks(model, settings.sparsity)
    fix_masks_as_mask_path_does(model, masks, {"sparsity": settings.sparsity})
    name = "encoder.layers.0.fc1.weight"
    module = model.get_submodule(W2V_PREFIX + "encoder.layers.0.fc1")
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


def test_interleaved_rotates_the_order_and_drops_the_warmup():
    from fairseq_subnets.benchmarks.timing import interleaved

    calls = []
    seconds = interleaved({name: (lambda name=name: calls.append(name)) for name in "abc"}, steps=3, warmup=1)
    assert "".join(calls) == "abc" "bca" "cab" "abc"
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3, "c": 3}


def test_cli_prints_parseable_json(result):
    """`result` is what the CLI printed, parsed."""
    assert result["settings"]["layers"] == 2 and result["settings"]["threads"] == 1
    assert result["pruned_nonzero_after_training"] == 0
    assert all(math.isfinite(result[row]["ratio"])
               for row in ("train", "train_learned", "train_learned_vs_full_sort", "decode", "decode_learned"))


def test_cli_rejects_bad_settings(capsys):
    from fairseq_subnets.cli.main import main

    assert main(["bench", "train", "--quick", "--sparsity", "1.5"]) == 2
    assert "sparsity" in capsys.readouterr().err
