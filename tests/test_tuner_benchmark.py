"""`fairseq-subnets bench tuners` on a tiny model: what it checks and reports, never how fast."""
import json
import math

import pytest

from factory import TINY

SMALL = dict(TINY, seconds=0.25, train_steps=2, train_warmup=1, decode_steps=2, decode_warmup=1)


@pytest.fixture(scope="module")
def result():
    """One run through the CLI, as a user starts it, read back from its JSON."""
    import contextlib
    import io

    from fairseq_subnets.cli.main import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main(["bench", "tuners", "--layers", "2", "--width", "64", "--ffn", "128", "--seconds", "0.25",
                     "--train-steps", "2", "--train-warmup", "1", "--decode-steps", "2", "--decode-warmup", "1",
                     "--json"]) == 0
    return json.loads(stdout.getvalue())


def test_every_tuner_is_timed_against_full_fine_tuning_and_its_stock_export(result):
    from fairseq_subnets.techniques.tuners import TUNERS

    assert set(result["train"]) == set(result["decode"]) == set(TUNERS)
    for method in TUNERS:
        train, decode = result["train"][method], result["decode"][method]
        assert (train["reference"], train["measured"]) == ("full fine-tuning", method)
        assert (decode["reference"], decode["measured"]) == (f"{method} stock export", f"{method} merged")
        for row in (train, decode):
            assert len(row["reference_s"]) == len(row["measured_s"]) == 2
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert result["allocator"]["reference"] == "adalora step"


def test_tuned_models_optimize_only_their_tuner_and_the_head(result):
    from fairseq_subnets.techniques.tuners import tuner_config
    from fairseq_subnets.benchmarks.untrained import CtcModelSize

    head = (TINY["width"] + 1) * 32  # the CTC output layer of vocabulary 32
    optimized = result["optimized_values"]
    assert optimized["full fine-tuning"] == result["parameters"]
    for method, count in result["tuner_parameters"].items():
        assert optimized[method] == count + head
    assert CtcModelSize(vocab=32, **TINY).vocab == 32 and tuner_config("lora").r == 8


def test_the_report_names_every_tuner_and_the_allocator(result):
    from fairseq_subnets.benchmarks.tuners import format_tuner_report

    report = format_tuner_report(result)
    assert "s2lora" in report and "AdaLoRA allocator step" in report and "(<= 1.00)" in report


def test_the_run_fails_when_a_merged_model_decodes_unlike_its_export(monkeypatch):
    from fairseq_subnets.benchmarks import tuners
    from fairseq_subnets.benchmarks.train_step import StepBenchSettings

    monkeypatch.setattr(tuners, "TUNERS", {method: tuners.TUNERS[method] for method in ("lora", "adalora")})
    monkeypatch.setattr(tuners, "bake_module", lambda model: None)  # "merged" keeps its transforms ...
    real = tuners.bake_state_dict
    monkeypatch.setattr(tuners, "bake_state_dict", lambda state: {k: v + 1e-3 if k.endswith("fc1.bias") else v
                                                                   for k, v in real(state).items()})
    with pytest.raises(AssertionError, match="merged and stock export decode differently"):
        tuners.run_tuner_benchmark(StepBenchSettings(**SMALL), say=lambda message: None)
