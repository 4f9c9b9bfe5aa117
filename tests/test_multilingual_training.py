"""Multilingual fine-tuning end to end with the stock tools: `fairseq-hydra-train` with the
shipped `multilingual_tiny` config on the skeleton's synthesized es/ca/ast sets and tiny pretrained
model (per-language heads and a shared head), stock `fairseq-generate` decoding each language of
the checkpoint, and a 2-rank CPU run through `fairseq-subnets launch` whose ranks train the same
language in every update."""
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import new_run_config, two_at_a_time
from fairseq_subnets import USER_DIR

pytestmark = pytest.mark.slow

LANGUAGES = ["es", "ca", "ast"]
UPDATES = 10


def overrides(result, save_dir, *extra):
    return [
        f"common.user_dir={USER_DIR}", f"task.data={result.corpus_dir}", f"task.languages=[{','.join(LANGUAGES)}]",
        f"model.w2v_path={result.pretrained_checkpoint}", f"checkpoint.save_dir={save_dir}",
        f"optimization.max_update={UPDATES}", "common.log_interval=1", *extra,
    ]


def train(skeleton_run, tmp_path_factory, name, *extra):
    from fairseq_subnets.runner import hydra_train

    _, result = skeleton_run
    save_dir = tmp_path_factory.mktemp(name) / "run"
    log = hydra_train("multilingual_tiny", overrides(result, save_dir, *extra), save_dir.parent / "train.log",
                      threads=1)  # two runs share the two cores
    return result, save_dir, log


@pytest.fixture(scope="module")
def both_runs(skeleton_run, tmp_path_factory):
    """The per-language-heads and the shared-head run, trained side by side (the two cores)."""
    return two_at_a_time((train, skeleton_run, tmp_path_factory, "multilingual_heads"),
                         (train, skeleton_run, tmp_path_factory, "multilingual_shared", "task.output_layers=shared"))


@pytest.fixture(scope="module")
def per_language_run(both_runs):
    return both_runs[0]


@pytest.fixture(scope="module")
def shared_run(both_runs):
    return both_runs[1]


def decode(result, checkpoint, language, out_dir, *task_options):
    """The README's fairseq-generate command for one language; returns (fairseq's CER, hypotheses)."""
    from fairseq_subnets.runner import fairseq_command, read_generate_output, run_logged

    command = [
        fairseq_command("fairseq-generate"), result.corpus_dir, "--user-dir", USER_DIR,
        "--task", "subnets_multilingual_finetuning", "--languages", ",".join(LANGUAGES), *task_options,
        "--decode-language", language, "--labels", "ltr", "--path", str(checkpoint), "--gen-subset", "test",
        "--post-process", "letter", "--scoring", "wer", "--wer-char-level", "--max-tokens", "1600000",
        "--required-batch-size-multiple", "1", "--cpu", "--results-path", str(out_dir),
    ]
    run_logged(command, Path(out_dir) / "generate.log")
    references, hypotheses, cer = read_generate_output((Path(out_dir) / "generate-test.txt").read_text())
    return cer, references, hypotheses


def last_validation(log):
    return [line for line in log.splitlines() if "valid on 'valid' subset" in line][-1]


@pytest.mark.parametrize("run", ["per_language_run", "shared_run"])
def test_validation_logs_loss_and_cer_per_language_and_their_mean(run, request):
    _, save_dir, log = request.getfixturevalue(run)
    validation = last_validation(log)
    for key in [f"{metric}_{language}" for language in LANGUAGES for metric in ("loss", "cer")]:
        assert re.search(rf"\| {key} [0-9.]+ ", validation), key
    cers = [float(re.search(rf"\| cer_{language} ([0-9.]+) ", validation).group(1)) for language in LANGUAGES]
    mean = float(re.search(r"\| cer_language_mean ([0-9.]+) ", validation).group(1))
    assert mean == pytest.approx(sum(cers) / len(cers), abs=2e-3)
    scores = [float(score) for score in re.findall(r"Saved checkpoint \S+ \(epoch .* score ([0-9.]+)\)", log)]
    assert scores[-1] == mean and (save_dir / "checkpoint_best.pt").exists()  # the best checkpoint's metric


def test_every_update_is_monolingual_and_the_epoch_plan_is_logged(per_language_run):
    _, _, log = per_language_run
    assert re.search(r"epoch 1: \d+ updates of 1 monolingual batches each; language shares: es 0\.\d+ "
                     r"\(p 0\.\d+\), ca .*, ast ", log)
    updates = [line for line in log.splitlines() if "[train_inner]" in line]
    assert len(updates) == UPDATES
    trained = set()
    for line in updates:
        shares = {language: float(re.search(rf"share_{language}=([0-9.]+)", line).group(1)) for language in LANGUAGES}
        assert sorted(shares.values()) == [0, 0, 1], line
        trained.add(max(shares, key=shares.get))
        assert "mixed_language_updates=0" in line
    assert len(trained) >= 2


def test_the_checkpoint_records_its_languages_and_holds_one_head_per_language(per_language_run):
    result, save_dir, _ = per_language_run
    state = torch.load(save_dir / "checkpoint_best.pt", weights_only=False)
    model_cfg = state["cfg"]["model"]
    sizes = [len((Path(result.corpus_dir) / language / "dict.ltr.txt").read_text().splitlines()) + 4
             for language in LANGUAGES]
    assert (model_cfg["languages"], model_cfg["language_output_layers"], model_cfg["language_output_sizes"]) == (
        LANGUAGES, "per_language", sizes)
    for language, size in zip(LANGUAGES, sizes):
        assert state["model"][f"language_heads.{language}.weight"].shape[0] == size
    assert not any(key.startswith("w2v_encoder.proj.") for key in state["model"])
    for language in LANGUAGES:  # what a run starting from this checkpoint compares its dictionaries with
        symbols = state["task_state"]["language_dictionaries"][language]
        assert symbols[4:] == [line.split()[0] for line in
                               (Path(result.corpus_dir) / language / "dict.ltr.txt").read_text().splitlines()]


def model_built_as(run_checkpoint, data, save_dir, **model_keys):
    """The model fairseq-hydra-train builds for the run config of `run_checkpoint` with `data` and
    `model_keys` changed, as a new run in `save_dir` (no recorded encoder config, transforms or
    languages), built here through the task."""
    from fairseq import tasks
    from omegaconf import open_dict

    import fairseq_subnets.plugin  # noqa: F401
    from fairseq_subnets.techniques.language_heads import MULTILINGUAL_MODEL_KEYS

    cfg = new_run_config(run_checkpoint, save_dir)
    with open_dict(cfg):
        cfg.task.data = str(data)
        for key in ("w2v_args", "transform_plan", *MULTILINGUAL_MODEL_KEYS):
            cfg.model[key] = None
        cfg.model.update(model_keys)
    return tasks.setup_task(cfg.task).build_model(cfg.model)


def test_runs_start_from_a_multilingual_checkpoint_with_the_heads_of_their_languages(per_language_run, skeleton_run,
                                                                                    tmp_path):
    """The LSP runs and pathways of Yang et al. start from the dense multilingual model: a
    single-language run continues one language (its head under the stock output layer), a
    multilingual run every language's head; the encoder comes along in both."""
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    result, save_dir, _ = per_language_run
    checkpoint = save_dir / "checkpoint_last.pt"
    upstream = load_checkpoint(checkpoint)["model"]
    encoder = [key for key in upstream if key.startswith("w2v_encoder.w2v_model.")]

    multilingual = model_built_as(checkpoint, result.corpus_dir, tmp_path / "multilingual", init_from=str(checkpoint)).state_dict()
    assert all(torch.equal(multilingual[key], upstream[key]) for key in encoder)
    assert all(torch.equal(multilingual[key], upstream[key]) for key in upstream if key.startswith("language_heads."))

    single = model_built_as(skeleton_run[1].finetuned_checkpoint, Path(result.corpus_dir) / "ca", tmp_path / "ca",
                            init_from=str(checkpoint), init_from_language="ca").state_dict()
    assert all(torch.equal(single[key], upstream[key]) for key in encoder)
    assert torch.equal(single["w2v_encoder.proj.weight"], upstream["language_heads.ca.weight"])


@pytest.fixture(scope="module")
def per_language_decodes(per_language_run, tmp_path_factory):
    """Every language decoded by its own fairseq-generate, two at a time: each is mostly one
    single-threaded start-up, and the machine has two cores."""
    result, save_dir, _ = per_language_run
    out = tmp_path_factory.mktemp("decodes")
    decoded = two_at_a_time(*((decode, result, save_dir / "checkpoint_best.pt", language, out / language)
                              for language in LANGUAGES))
    return dict(zip(LANGUAGES, decoded))


@pytest.mark.parametrize("language", LANGUAGES)
def test_fairseq_generate_decodes_each_language_with_its_head_and_prints_a_cer(per_language_run, per_language_decodes,
                                                                              language):
    from fairseq_subnets.scoring import error_rates

    result, _, _ = per_language_run
    cer, references, hypotheses = per_language_decodes[language]
    expected = (Path(result.corpus_dir) / language / "test.wrd").read_text().splitlines()
    assert sorted(references.values()) == sorted(expected)  # this language's test set, read with its dictionary
    assert len(hypotheses) == len(expected)
    assert cer == pytest.approx(error_rates((references[i], hypotheses[i]) for i in hypotheses).cer, abs=0.01)


def test_fairseq_generate_decodes_a_shared_head_checkpoint(shared_run, tmp_path):
    result, save_dir, _ = shared_run
    state = torch.load(save_dir / "checkpoint_best.pt", weights_only=False)
    assert state["cfg"]["model"]["language_output_layers"] == "shared"
    cer, references, hypotheses = decode(result, save_dir / "checkpoint_best.pt", "ca", tmp_path,
                                         "--output-layers", "shared")
    assert len(hypotheses) == len((Path(result.corpus_dir) / "ca" / "test.wrd").read_text().splitlines())
    assert 0 <= cer


def test_decoding_a_language_the_checkpoint_lacks_or_with_the_wrong_head_mode_is_refused(per_language_run, tmp_path):
    from fairseq_subnets.runner import RunError

    result, save_dir, _ = per_language_run
    attempts = {"task.decode_language=en is not one of task.languages": ("en", tmp_path / "en"),
                "the checkpoint has per_language output layers; pass --output-layers per_language": (
                    "es", tmp_path / "shared", "--output-layers", "shared")}
    with ThreadPoolExecutor(2) as pool:
        refusals = {message: pool.submit(decode, result, save_dir / "checkpoint_best.pt", *arguments)
                    for message, arguments in attempts.items()}
    for message, refusal in refusals.items():
        with pytest.raises(RunError, match=message):
            refusal.result()


def test_two_cpu_ranks_train_the_same_language_in_every_update_under_identical_masks(skeleton_run, tmp_path):
    """fairseq sums the logging outputs of all ranks and accumulated batches before they are
    logged, so an update whose share of one language is exactly 1 was trained on that language by
    both ranks in all of their update_freq batches. The model carries both mask kinds that live in
    dense storage: per-language FFN masks and a dense attention mask; every rank must hold the
    same ones. They are pathway updates (Adam with weight decay): an FFN weight that no language's
    mask keeps ends exactly as pretrained, although legacy DDP hands it a zero gradient."""
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.core.parametrize import masks_from_state_dict
    from fairseq_subnets.core.stats import union
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    _, result = skeleton_run
    masks = {}
    for seed, language in enumerate(LANGUAGES):
        masks[language] = tmp_path / f"{language}.mask"
        assert cli(["prune", result.pretrained_checkpoint, "--method", "random", "--seed", str(seed), "--sparsity",
                    "0.5", "--targets", "ffn", "--out", str(masks[language])]) == 0
    attention = tmp_path / "attention.mask"
    assert cli(["prune", result.pretrained_checkpoint, "--method", "global-l1", "--sparsity", "0.5", "--targets",
                "attn", "--out", str(attention)]) == 0
    save_dir = tmp_path / "ddp"
    language_masks = ",".join(f"{language}:{path}" for language, path in masks.items())
    arguments = ["--config-dir", str(Path(USER_DIR) / "config" / "finetune"), "--config-name", "multilingual_tiny",
                 *overrides(result, save_dir, "optimization.update_freq=[2]",
                            f"+model.language_mask_files=[{language_masks}]", f"+model.mask_path={attention}",
                            "+model.mask_targets=attn", "+model.mask_storage=dense", "+optimizer.weight_decay=0.1")]
    arguments = [a.replace(f"optimization.max_update={UPDATES}", "optimization.max_update=6") for a in arguments]
    assert cli(["launch", "--nprocs", "2", "--log-dir", str(tmp_path), "--", *arguments]) == 0
    log = (tmp_path / "train_rank0.log").read_text()
    assert re.search(r"encoder masks identical on all 2 ranks \(sha256 [0-9a-f]{16}\)", log)
    assert re.search(r"epoch 1: \d+ updates of 4 monolingual batches each", log)
    updates = [line for line in log.splitlines() if "[train_inner]" in line]
    assert len(updates) == 6
    for line in updates:
        shares = sorted(float(re.search(rf"share_{language}=([0-9.]+)", line).group(1)) for language in LANGUAGES)
        assert shares == [0, 0, 1] and "mixed_language_updates=0" in line, line
    assert "done training" in log

    state = load_checkpoint(save_dir / "checkpoint_last.pt")["model"]
    for language, path in masks.items():
        expected = {**load_mask_file(str(path)).masks, **load_mask_file(str(attention)).masks}
        held = masks_from_state_dict(state, language=language)
        assert held.keys() == expected.keys()
        assert all(torch.equal(held[name], mask) for name, mask in expected.items()), language
    pretrained = load_checkpoint(result.pretrained_checkpoint)["model"]
    kept_by_any = union(*(load_mask_file(str(path)).masks for path in masks.values()))
    for name, kept in kept_by_any.items():
        stored = state[f"w2v_encoder.w2v_model.{name[:-len('.weight')]}.parametrizations.weight.original"]
        assert torch.equal(stored[~kept], pretrained[name][~kept]), name
        assert not torch.equal(stored[kept], pretrained[name][kept]), name


def test_export_of_one_language_is_a_stock_checkpoint_with_that_languages_outputs(per_language_run, tmp_path):
    """`fairseq-subnets export --language` gives a stock wav2vec_ctc checkpoint whose outputs equal
    the multilingual model's for that language (to float rounding: GEMM order may differ)."""
    from fairseq import checkpoint_utils

    from fairseq_subnets.cli.main import main as cli

    result, save_dir, _ = per_language_run
    language = "ca"
    exported = tmp_path / f"{language}.pt"
    assert cli(["export", str(save_dir / "checkpoint_last.pt"), "--language", language, "--out", str(exported)]) == 0
    assert cli(["export", str(save_dir / "checkpoint_last.pt"), "--language", "pl",
                "--out", str(tmp_path / "pl.pt")]) == 2
    assert not (tmp_path / "pl.pt").exists()
    (multilingual,), _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(save_dir / "checkpoint_last.pt")], arg_overrides={"decode_language": language})
    (stock,), cfg, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(exported)], arg_overrides={"data": str(Path(result.corpus_dir) / language)})
    assert type(stock).__name__ == "Wav2VecCtc" and cfg.model._name == "wav2vec_ctc"
    source = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = multilingual.eval()(source=source, padding_mask=None, language=language)["encoder_out"]
        theirs = stock.eval()(source=source, padding_mask=None)["encoder_out"]
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_the_data_wait_benchmark_reports_a_share_of_the_loop(skeleton_run):
    from fairseq_subnets.benchmarks.multilingual_data import (DataWaitBenchSettings, format_data_wait_report,
                                                              run_data_wait_benchmark)

    _, result = skeleton_run
    report = run_data_wait_benchmark(DataWaitBenchSettings(result.corpus_dir, tuple(LANGUAGES), layers=2, width=64,
                                                           ffn=128, max_tokens=120_000, steps=3, warmup=1),
                                      say=lambda message: None)
    assert 0 < report["data_wait_share"] < 1
    assert len(report["batch_languages"]) == 3 and set(report["batch_languages"]) <= set(LANGUAGES)
    assert report["comparison"]["reference"] == "training step"
    assert "data-wait share of the loop" in format_data_wait_report(report)
