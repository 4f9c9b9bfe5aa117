"""End to end on real synthesized speech: stock fairseq-hydra-train (pretraining, then CTC
fine-tuning through the plugin) and stock fairseq-generate, then what those checkpoints promise.
Every test on the pipeline's checkpoints is slow (they come from fairseq runs); the checkpoint
loader's refusals and the generator's decoding rule are checked without them."""
import math
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import two_at_a_time


def manifest_size(tsv_path):
    return len(Path(tsv_path).read_text().splitlines()) - 1


@pytest.mark.slow
def test_pipeline_decodes_every_test_utterance_with_a_learned_cer(skeleton_run):
    settings, result = skeleton_run
    test_tsv = Path(result.corpus_dir) / settings.language / "test.tsv"
    assert result.test_utterances == manifest_size(test_tsv)
    assert result.test_cer < 70.0, result  # ~40% measured at this schedule; 100% means nothing learned
    assert 0.0 <= result.test_cer <= result.test_wer


@pytest.mark.slow
def test_our_cer_matches_fairseq_char_level_score(skeleton_run, tmp_path):
    from fairseq_subnets.runner import generate

    settings, result = skeleton_run
    decoded = generate(Path(result.corpus_dir) / settings.language, result.finetuned_checkpoint, "valid", tmp_path)
    assert decoded.hypotheses == manifest_size(Path(result.corpus_dir) / settings.language / "valid.tsv")
    assert math.isclose(decoded.cer, decoded.fairseq_score, abs_tol=0.005)  # fairseq prints 2 decimals


@pytest.mark.slow
def test_fine_tuned_checkpoint_loads_weights_only_with_the_plugin_and_not_without(skeleton_run, tmp_path):
    """Each in another process (`python -c` through the runner's launcher: forked from a server
    that imported fairseq's commands, never the plugin), side by side."""
    from fairseq_subnets.runner import run_logged

    _, result = skeleton_run
    code = textwrap.dedent(f"""
        import pickle, sys, torch
        if sys.argv[1] == "plugin":
            import fairseq_subnets.plugin
        try:
            torch.load({result.finetuned_checkpoint!r}, map_location="cpu")
            print("outcome: loaded")
        except pickle.UnpicklingError:
            print("outcome: refused")
    """)
    logs = two_at_a_time(*((run_logged, [sys.executable, "-c", code, mode], tmp_path / f"{mode}.log")
                           for mode in ("plain", "plugin")))
    assert [log.splitlines()[-1] for log in logs] == ["outcome: refused", "outcome: loaded"]


def test_load_checkpoint_still_refuses_classes_outside_the_allow_list(tmp_path):
    from fairseq_subnets.plugin.formats.checkpoints import CheckpointLoadError, load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": pickle.PickleError("not allowed")}, path)
    with pytest.raises(CheckpointLoadError, match="evil.pt.*weights-only"):
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointLoadError, match="evil.pt"):
        load_checkpoint(path)


def build_from_checkpoint(checkpoint, model_name):
    """The task and a model of `model_name` built from a fine-tuned checkpoint's own config."""
    from fairseq import tasks
    from fairseq.models import MODEL_REGISTRY
    from omegaconf import OmegaConf

    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["cfg"])
    task = tasks.setup_task(cfg.task)
    model_cfg = OmegaConf.merge(cfg.model, {"_name": model_name})
    model = MODEL_REGISTRY[model_name].build_model(model_cfg, task)
    model.load_state_dict(state["model"], strict=True)
    return task, model.eval()


@pytest.mark.slow
def test_plugin_model_without_masks_equals_stock_model(skeleton_run):
    settings, result = skeleton_run
    task, ours = build_from_checkpoint(result.finetuned_checkpoint, "subnets_wav2vec_ctc")
    _, stock = build_from_checkpoint(result.finetuned_checkpoint, "wav2vec_ctc")
    assert type(stock).__name__ == "Wav2VecCtc"
    task.load_dataset("test")
    sample = task.dataset("test").collater([task.dataset("test")[i] for i in range(4)])
    with torch.no_grad():
        ours_logits = ours.get_logits(ours(**sample["net_input"]))
        stock_logits = stock.get_logits(stock(**sample["net_input"]))
    assert torch.equal(ours_logits, stock_logits)


@pytest.mark.slow
def test_generator_returns_what_fairseq_generate_reads(skeleton_run):
    settings, result = skeleton_run
    task, model = build_from_checkpoint(result.finetuned_checkpoint, "subnets_wav2vec_ctc")
    task.load_dataset("test")
    dataset = task.dataset("test")
    sample = dataset.collater([dataset[i] for i in range(3)])
    generator = task.build_generator([model], None)
    hypotheses = generator.generate([model], sample)
    assert len(hypotheses) == 3
    blank = task.target_dictionary.index(task.blank_symbol)
    for nbest in hypotheses:
        best = nbest[0]
        assert set(best) >= {"tokens", "score", "positional_scores", "alignment"}
        assert best["tokens"].dtype == torch.long and best["tokens"].dim() == 1
        assert blank not in best["tokens"].tolist()
        assert isinstance(best["score"], float)
        assert best["positional_scores"].shape == best["tokens"].shape
        assert best["positional_scores"].dtype == torch.float32


def test_generator_collapses_repeats_and_drops_blanks():
    from fairseq.data import Dictionary

    from fairseq_subnets.plugin.components.generator import CtcGreedyGenerator

    dictionary = Dictionary()
    a, b = dictionary.add_symbol("a"), dictionary.add_symbol("b")
    blank = dictionary.bos()
    frames = [a, a, blank, a, b, b, blank, blank]
    log_probs = torch.full((len(frames), len(dictionary)), -10.0)
    log_probs[torch.arange(len(frames)), torch.tensor(frames)] = -0.5
    best = CtcGreedyGenerator(dictionary, blank).best_path(log_probs)
    assert best["tokens"].tolist() == [a, a, b]
    assert best["positional_scores"].tolist() == [-0.5, -0.5, -0.5]
    assert best["score"] == pytest.approx(-0.5 * len(frames))


@pytest.mark.slow
def test_decoding_batch_limit_below_longest_utterance_names_the_flag(skeleton_run):
    settings, result = skeleton_run
    task, _ = build_from_checkpoint(result.finetuned_checkpoint, "subnets_wav2vec_ctc")
    task.load_dataset("test")
    with pytest.raises(ValueError, match="--max-tokens"):
        task.get_batch_iterator(task.dataset("test"), max_tokens=12000)


def failure_of(function, *arguments):
    """The RunError `function(*arguments)` raises (None if it raises none)."""
    from fairseq_subnets.runner import RunError

    try:
        function(*arguments)
    except RunError as error:
        return error
    return None


@pytest.mark.slow
def test_a_broken_manifest_or_a_relative_data_path_stops_training_before_it_starts(skeleton_run, tmp_path):
    """Both runs side by side (two single-threaded start-ups): a missing audio file in valid.tsv is
    named with its line, and a relative task.data with the reason it must be absolute."""
    import shutil

    from fairseq_subnets import USER_DIR
    from fairseq_subnets.runner import hydra_train

    settings, result = skeleton_run
    broken = tmp_path / "broken"
    shutil.copytree(Path(result.corpus_dir) / settings.language, broken)
    lines = (broken / "valid.tsv").read_text().splitlines()
    lines[3] = "missing/nothing.wav\t16000"
    (broken / "valid.tsv").write_text("\n".join(lines) + "\n")

    def training(data, name):
        return (failure_of, hydra_train, "tiny", [
            f"common.user_dir={USER_DIR}", f"task.data={data}", f"model.w2v_path={result.pretrained_checkpoint}",
            f"checkpoint.save_dir={tmp_path / name}"], tmp_path / f"{name}.log")

    on_broken, on_relative = two_at_a_time(training(broken, "broken"), training("relative/manifests", "relative"))
    assert f"{broken / 'valid.tsv'}:4" in str(on_broken)
    assert "absolute path" in str(on_relative)
    assert not list(tmp_path.rglob("checkpoint_last.pt"))
