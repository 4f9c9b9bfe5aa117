"""`fairseq-subnets bench deploy` (benchmarks.deploy): a tiny run through the command prints every
row, ratio and target; the memory walk counts each storage once and reaches what sparse decoding
holds; the break-even rule on made-up speed-ups; bad settings refused before any model is built.
No timing is asserted."""
import contextlib
import csv
import io
import json

import pytest
import torch

from fairseq_subnets.benchmarks import deploy
from fairseq_subnets.benchmarks.deploy import DeployBenchSettings, break_even_rows, break_even_sparsity

TINY_RUN = ["bench", "deploy", "--shape", "tiny", "--sparsities", "0.9,0.5", "--block-sparsities", "0.9",
            "--threads", "1", "--seconds", "0.5,1", "--repeats", "2"]
LABELS = ("global L1 50%", "global L1 90%", "8x1 blocks 90%")


@pytest.fixture(scope="module")
def tiny_result():
    """The JSON result of a tiny run through the command, and what it said on stderr."""
    from fairseq_subnets.cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(TINY_RUN + ["--json"]) == 0
    return json.loads(stdout.getvalue()), stderr.getvalue()


def test_a_tiny_run_measures_every_mask_set_thread_count_and_length_against_dense(tiny_result):
    result, progress = tiny_result
    assert "HF export and import" in progress  # progress goes to stderr with --json
    rows = result["decoding"]
    assert [(row["masks"], row["seconds"]) for row in rows] == [(label, length) for label in LABELS
                                                                 for length in (0.5, 1.0)]
    for row in rows:
        assert len(row["dense_s"]) == 2 and row["masked_matrices"] == 12
        assert row["on_sparse_matrices"] == 12  # `on` ran every masked matrix sparse
        for mode in ("on", "auto"):
            timing = row[mode]
            assert len(timing["seconds"]) == 2
            assert timing["speedup"] == pytest.approx(timing["dense_median_s"] / timing["median_s"])
            assert timing["speedup_min"] <= timing["speedup"] <= timing["speedup_max"]
            assert timing["max_abs_difference"] <= 1e-4  # the same logits as the dense export
    assert [(row["threads"], row["seconds"]) for row in result["break_even"]] == [(1, 0.5), (1, 1.0)]
    memory = {row["masks"]: row for row in result["memory"]}
    assert list(memory) == list(LABELS)
    assert memory["global L1 50%"]["on_bytes"] > memory["global L1 90%"]["on_bytes"]  # more CSR entries
    assert len({row["dense_bytes"] for row in memory.values()}) == 1
    # `auto` settles each fixed-mask matrix: no weight stack beside its product
    assert memory["global L1 90%"]["auto_bytes"]["1"] <= memory["global L1 90%"]["dense_bytes"]
    compact = {row["masks"]: row for row in result["compact"]}
    assert list(compact) == list(LABELS)
    assert all(row["compact_bytes"] < row["dense_bytes"] and row["dense_load_s"] > 0 and row["compact_load_s"] > 0
               for row in compact.values())
    assert compact["global L1 90%"]["compact_bytes"] < compact["global L1 50%"]["compact_bytes"]
    hf = result["hf"]
    assert hf["masks"] == "global L1 90%" and hf["export_s"] > 0 and hf["import_s"] > 0
    assert hf["hf_weights_bytes"] > 0 and hf["imported_bytes"] > 0
    assert [row["pass"] is None for row in result["targets"]] == [False, False, False, False]


def test_the_report_prints_every_row_ratio_and_target(tiny_result):
    result, _ = tiny_result
    report = deploy.format_deploy_report(result)
    decoding = [line for line in report.splitlines() if line.startswith(LABELS) and " s " in line]
    assert len(decoding) == 6
    assert all(line.count("x [") == 2 for line in decoding)  # on and auto speed-ups with their range
    memory_and_compact = [line for line in report.splitlines() if line.startswith(LABELS) and " s " not in line]
    assert len(memory_and_compact) == 6 and all(line.count("x") >= 1 for line in memory_and_compact)
    assert "compact checkpoint" in report
    assert "export " in report and "import " in report
    verdicts = [line for line in report.splitlines() if line.rstrip().endswith(("PASS", "FAIL"))]
    assert len(verdicts) == 4  # 90% at each of 2 lengths, auto, memory


def test_the_csv_holds_the_decoding_table(tiny_result):
    result, _ = tiny_result
    records = list(csv.reader(io.StringIO(deploy.format_deploy_csv(result))))
    assert tuple(records[0]) == deploy.DECODING_COLUMNS
    assert [(record[0], float(record[2])) for record in records[1:]] == [(row["masks"], row["seconds"])
                                                                        for row in result["decoding"]]


def test_targets_not_measured_say_so():
    result = {"decoding": [synthetic_row("global-l1", 0.5, 2, 4.0, 1.2)],
              "memory": [{"method": "global-l1", "sparsity": 0.5, "on_bytes": 1, "dense_bytes": 2}]}
    rows = deploy.target_rows(result)
    assert [row["pass"] for row in rows] == [None, True, None]
    assert "not measured" in deploy._verdict(rows[0]["pass"])


# --------------------------------------------------------------------------------------- memory


def test_memory_counts_a_shared_storage_once_and_reaches_the_csr_form():
    from fairseq_subnets.techniques.sparse_decoding import SparseProjection

    linear = torch.nn.Linear(8, 4)
    with torch.no_grad():
        linear.weight[:, :6] = 0  # 8 of 32 weights kept
    tied = torch.nn.Linear(8, 4)
    tied.weight = linear.weight  # one storage, two parameters
    model = torch.nn.ModuleDict({"0": linear, "tied": tied})
    model.register_buffer("first_row", linear.weight.detach()[0])  # a view of it
    dense_bytes = 32 * 4 + 2 * 4 * 4  # the weight once, two biases
    assert deploy.resident_weight_bytes(model) == dense_bytes

    projection = SparseProjection(linear, "0.weight", "on")
    linear.forward = projection
    model.eval()
    with torch.no_grad():
        linear(torch.randn(3, 8))
    csr = projection.weight_csr
    assert csr is not None and csr._nnz() == 8
    # whole storages: torch may allocate a component larger than its entries need
    csr_bytes = sum(part.untyped_storage().nbytes() for part in (csr.crow_indices(), csr.col_indices(), csr.values()))
    assert deploy.resident_weight_bytes(model) == dense_bytes + csr_bytes  # `source` is the weight: not again


def test_memory_reaches_caches_held_as_plain_attributes():
    linear = torch.nn.Linear(8, 4, bias=False)
    before = deploy.resident_weight_bytes(linear)
    linear.cache = (("key",), torch.zeros(100))
    assert deploy.resident_weight_bytes(linear) == before + 400


# ----------------------------------------------------------------------------------- break-even


@pytest.mark.parametrize("speedups, expected", [
    ({0.5: 0.6, 0.7: 0.9, 0.8: 1.05, 0.9: 1.6, 0.95: 2.0}, 0.8),
    ({0.5: 1.2, 0.7: 1.3, 0.9: 1.9}, 0.5),
    ({0.5: 1.1, 0.7: 0.97, 0.8: 1.2, 0.9: 1.5}, 0.8),  # a win below a loss is noise, not the break-even
    ({0.5: 0.5, 0.9: 1.0}, None),  # a tie does not beat dense
    ({0.5: 1.4, 0.95: 0.9}, None),
], ids=["monotone", "every-one", "noisy-win-below", "tie", "loses-at-the-top"])
def test_break_even_is_the_lowest_sparsity_from_which_sparse_keeps_winning(speedups, expected):
    assert break_even_sparsity(speedups) == expected


def synthetic_row(method, sparsity, threads, seconds, on_speedup):
    return {"method": method, "sparsity": sparsity, "threads": threads, "seconds": seconds,
            "on": {"speedup": on_speedup}, "auto": {"speedup": 1.0}}


def test_break_even_is_found_per_thread_count_and_length_over_global_l1_rows_only():
    rows = [synthetic_row("global-l1", s, threads, 4.0, speedup) for threads, curve in
            ((1, {0.5: 0.8, 0.9: 1.7}), (2, {0.5: 0.7, 0.9: 0.95})) for s, speedup in curve.items()]
    rows += [synthetic_row("block-l2", 0.5, 2, 4.0, 3.0), synthetic_row("global-l1", 0.5, 1, 15.0, 1.1)]
    assert break_even_rows(rows) == [{"threads": 1, "seconds": 4.0, "sparsity": 0.9},
                                     {"threads": 1, "seconds": 15.0, "sparsity": 0.5},
                                     {"threads": 2, "seconds": 4.0, "sparsity": None}]


def test_speedup_is_dense_over_sparse_with_the_per_round_range():
    timing = deploy.speedup({"dense": [2.0, 4.0, 3.0], "on": [1.0, 1.0, 2.0]}, "on")
    assert timing["speedup"] == pytest.approx(3.0 / 1.0)
    assert (timing["speedup_min"], timing["speedup_max"]) == pytest.approx((1.5, 4.0))


# ----------------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("changes, message", [
    ({"shape": "large"}, "--shape large: choose one of tiny, base, xlsr_300m"),
    ({"sparsities": (0.5, 1.0)}, "--sparsities: 1 is not a sparsity in (0, 1)"),
    ({"block_sparsities": (0.0,)}, "--block-sparsities: 0 is not a sparsity in (0, 1)"),
    ({"sparsities": (), "block_sparsities": ()}, "--sparsities and --block-sparsities are both empty"),
    ({"sparsities": (0.9, 0.9)}, "--sparsities: 0.9 is listed twice"),
    ({"threads": ()}, "--threads: give at least one value"),
    ({"threads": (0,)}, "--threads: 0 is not between 1 and this machine's"),
    ({"seconds": (0.01,)}, "--seconds: 0.01 s of audio is shorter than the feature extractor's receptive field"),
    ({"repeats": 0}, "--repeats must be at least 1, got 0"),
], ids=["shape", "sparsity-one", "block-sparsity-zero", "nothing", "twice", "no-threads", "threads-zero",
        "seconds-short", "repeats-zero"])
def test_bad_settings_are_refused_before_any_model_is_built(changes, message, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(deploy, "build_untrained_ctc_model", no_model)
    settings = DeployBenchSettings(**{**DeployBenchSettings().__dict__, **changes})
    with pytest.raises(ValueError) as refused:
        deploy.run_deploy_benchmark(settings, say=lambda message: None)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_more_threads_than_cpus_are_refused(monkeypatch):
    monkeypatch.setattr(deploy.os, "cpu_count", lambda: 2)
    with pytest.raises(ValueError, match=r"^--threads: 3 is not between 1 and this machine's 2 CPUs$"):
        DeployBenchSettings(threads=(1, 3)).check()


def test_the_defaults_are_the_issues_table(monkeypatch):
    monkeypatch.setattr(deploy.os, "cpu_count", lambda: 2)
    settings = DeployBenchSettings()
    settings.check()
    assert [spec.label for spec in settings.mask_specs()] == [
        "global L1 50%", "global L1 70%", "global L1 80%", "global L1 90%", "global L1 95%", "8x1 blocks 90%"]
    assert (settings.shape, settings.threads, settings.seconds) == ("xlsr_300m", (1, 2), (4.0, 15.0))
