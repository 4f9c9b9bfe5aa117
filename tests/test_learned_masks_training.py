"""Learned masks (S3-Router) in real fairseq runs: stock fairseq-hydra-train with the shipped
`learned_masks_tiny` config on the skeleton's synthesized speech and tiny pretrained model, on 2 CPU
ranks with one top-k over all encoder matrices whose ranks hold identical masks, with fairseq's
`freeze_finetune_updates` set as stock recipes set it (it must not stop the scores);
stock fairseq-generate decoding the checkpoint; export to a checkpoint stock fairseq loads
without the plugin; `masks extract` writing the learned masks; and a bundle of three languages'
runs on the one frozen backbone, which stock fairseq-generate decodes by language and which gives
each language's own logits exactly. Resuming after a kill, bit for bit, is in
test_reproducible_training."""
import re
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import assert_decodes_and_exports_to_stock_fairseq
from fairseq_subnets import USER_DIR

pytestmark = pytest.mark.slow

SPARSITY = 0.1
LANGUAGE = "ca"


def overrides(result, save_dir, *extra):
    return [f"common.user_dir={USER_DIR}", f"task.data={Path(result.corpus_dir) / LANGUAGE}",
            f"model.w2v_path={result.pretrained_checkpoint}", f"checkpoint.save_dir={save_dir}", *extra]


LEARNED_SETTINGS = ("model.score_scope=global", "model.score_targets=all")
"""One top-k over all 18 encoder matrices, in every run of this module (a bundle's runs mask the same weights)."""


@pytest.fixture(scope="module")
def learned_run(skeleton_run, tmp_path_factory):
    """Two gloo ranks (`fairseq-subnets launch`), 10 updates per epoch each, 20 updates; fairseq's
    encoder freeze set to 1000 updates, as stock recipes set it, covers the whole run."""
    from fairseq_subnets.cli.main import main as cli

    _, result = skeleton_run
    out = tmp_path_factory.mktemp("learned_masks")
    arguments = ["--config-dir", str(Path(USER_DIR) / "config" / "finetune"), "--config-name", "learned_masks_tiny",
                 *overrides(result, out / "run", *LEARNED_SETTINGS, "optimization.max_update=20",
                            "checkpoint.save_interval_updates=5", "checkpoint.keep_interval_updates=-1",
                            "dataset.validate_interval_updates=10", "model.freeze_finetune_updates=1000")]
    assert cli(["launch", "--nprocs", "2", "--log-dir", str(out), "--", *arguments]) == 0
    return result, out / "run", (out / "train_rank0.log").read_text()


@pytest.fixture(scope="module")
def bundle(learned_run, tmp_path_factory):
    """A bundle of the ca run and two shorter es and ast runs (started side by side), built with
    `bundles build` from es and ca and grown with `bundles add`; returns (result, bundle path,
    {language: its own checkpoint})."""
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.runner import CONFIG_DIR
    from interrupted_runs import start_training, wait_finished

    result, run_dir, _ = learned_run
    out = tmp_path_factory.mktemp("bundle")
    checkpoints = {LANGUAGE: run_dir / "checkpoint_last.pt"}
    started = {}
    for language in ("es", "ast"):
        arguments = overrides(result, out / language, *LEARNED_SETTINGS, "optimization.max_update=8",
                              "dataset.disable_validation=true")
        arguments[1] = f"task.data={Path(result.corpus_dir) / language}"
        started[language] = start_training(CONFIG_DIR / "finetune", "learned_masks_tiny", arguments,
                                           out / f"{language}.log", threads=1)
    for language, process in started.items():
        wait_finished(process, out / f"{language}.log")
        checkpoints[language] = out / language / "checkpoint_last.pt"
    path = out / "bundle.pt"
    assert cli(["bundles", "build", f"es={checkpoints['es']}", f"ca={checkpoints['ca']}", "--out", str(path)]) == 0
    assert cli(["bundles", "add", str(path), f"ast={checkpoints['ast']}"]) == 0
    return result, path, checkpoints


def test_pretrained_weights_stay_bit_identical_while_identical_masks_learn_on_both_ranks(learned_run):
    """Every checkpoint: the wav2vec2 weights equal the pretrained ones bit for bit, and exactly
    round(0.1 n) of all n masked weights are pruned, in shares that differ between matrices (one
    top-k over all). The masks move although fairseq's encoder freeze covers the whole run, and
    both ranks hold the same masks when each epoch begins (compared by digest; the digests of the
    two epochs differ)."""
    from fairseq_subnets.core.parametrize import masks_from_state_dict
    from fairseq_subnets.core.pruning import pruned_count
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint
    from fairseq_subnets.plugin.components.models import W2V_PREFIX
    from interrupted_runs import interval_checkpoints

    result, run_dir, log = learned_run
    checks = re.findall(r"encoder masks identical on all 2 ranks \(sha256 ([0-9a-f]{16})\)", log)
    assert len(checks) == 2 and checks[0] != checks[1], log[-3000:]
    pretrained = load_checkpoint(result.pretrained_checkpoint)["model"]
    masks_by_update = {}
    for checkpoint in (interval_checkpoints(run_dir)[5], run_dir / "checkpoint_last.pt"):
        state = load_checkpoint(checkpoint)["model"]
        compared = 0
        for key, value in state.items():
            if key.startswith(W2V_PREFIX) and ".score_mask." not in key:
                name = key[len(W2V_PREFIX):].replace(".parametrizations.weight.original", ".weight")
                assert torch.equal(value, pretrained[name]), (checkpoint, key)
                compared += 1
        assert compared > 50  # every wav2vec2 tensor of the tiny model
        masks = masks_from_state_dict(state, prefix=W2V_PREFIX)
        assert len(masks) == 6 * 3
        total = sum(mask.numel() for mask in masks.values())
        assert sum(int((~mask).sum()) for mask in masks.values()) == pruned_count(SPARSITY, total)
        assert len({int((~mask).sum()) for mask in masks.values()}) > 1
        masks_by_update[checkpoint.name] = masks
    first, last = masks_by_update.values()
    assert any(not torch.equal(first[name], last[name]) for name in first)


def test_fairseq_generate_decodes_the_learned_mask_checkpoint_and_export_bakes_it_for_stock_fairseq(learned_run,
                                                                                                     tmp_path):
    result, run_dir, _ = learned_run
    assert_decodes_and_exports_to_stock_fairseq(run_dir / "checkpoint_last.pt", Path(result.corpus_dir) / LANGUAGE,
                                                tmp_path)


def test_masks_extract_writes_the_learned_masks_for_the_mask_tools(learned_run, tmp_path, capsys):
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.core.parametrize import masks_from_state_dict
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    _, run_dir, _ = learned_run
    path = tmp_path / "learned.mask"
    assert cli(["masks", "extract", str(run_dir / "checkpoint_last.pt"), "--out", str(path)]) == 0
    written = load_mask_file(str(path))
    expected = masks_from_state_dict(load_checkpoint(run_dir / "checkpoint_last.pt")["model"])
    assert written.masks.keys() == expected.keys()
    assert all(torch.equal(written.masks[name], mask) for name, mask in expected.items())
    assert written.metadata["method"] == "extracted"
    capsys.readouterr()
    assert cli(["masks", "stats", str(path), "--by", "kind", "--json"]) == 0
    assert '"fc1"' in capsys.readouterr().out


def bundle_and_own_logits(bundle_path, checkpoint, corpus_dir, language):
    """Logits of three test utterances of `language` from the bundle (decoding that language) and
    from the language's own checkpoint, both loaded as fairseq-generate loads them."""
    from fairseq import checkpoint_utils

    (own,), _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(Path(corpus_dir) / language)})
    (bundled,), _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(bundle_path)], arg_overrides={"data": str(corpus_dir), "decode_language": language})
    task.load_dataset("test")
    sample = task.dataset("test").collater([task.dataset("test")[i] for i in range(3)])
    with torch.no_grad():
        ours = own.eval().get_logits(own(**sample["net_input"]))
        theirs = bundled.eval().get_logits(bundled(**sample["net_input"], language=language))
    return theirs, ours


@pytest.mark.parametrize("language", ["es", "ca", "ast"])
def test_a_bundle_decodes_each_language_exactly_as_its_own_model(bundle, language):
    result, path, checkpoints = bundle
    from_bundle, own = bundle_and_own_logits(path, checkpoints[language], result.corpus_dir, language)
    assert torch.equal(from_bundle, own)


def test_stock_fairseq_generate_decodes_a_bundle_language_by_name(bundle, tmp_path):
    from fairseq_subnets.runner import fairseq_command, read_generate_output, run_logged

    result, path, _ = bundle
    command = [fairseq_command("fairseq-generate"), result.corpus_dir, "--user-dir", USER_DIR,
               "--task", "subnets_multilingual_finetuning", "--languages", "es,ca,ast", "--decode-language", "ast",
               "--path", str(path), "--labels", "ltr", "--gen-subset", "test", "--post-process", "letter",
               "--scoring", "wer", "--wer-char-level", "--max-tokens", "1600000",
               "--required-batch-size-multiple", "1", "--cpu", "--results-path", str(tmp_path)]
    run_logged(command, tmp_path / "generate.log")
    references, hypotheses, _ = read_generate_output((tmp_path / "generate-test.txt").read_text())
    expected = (Path(result.corpus_dir) / "ast" / "test.wrd").read_text().splitlines()
    assert sorted(references.values()) == sorted(expected) and len(hypotheses) == len(expected)


def test_a_bundle_lists_its_storage_removes_languages_and_refuses_another_backbone(bundle, tmp_path, capsys):
    """Each language costs its mask file and output layer; the mask is within 1.15 x the entropy
    bound at its sparsity (plus the file's header). A fine-tuned model (trained weights) cannot join."""
    import json
    import math
    import shutil

    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.plugin.formats.bundles import read_bundle

    result, path, checkpoints = bundle
    capsys.readouterr()
    assert cli(["bundles", "list", str(path), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [row["language"] for row in listing["languages"]] == ["es", "ca", "ast"]
    weights = 3 * (4 * 128 * 128 + 2 * 128 * 512)  # q, k, v, out, fc1, fc2 of 3 layers, width 128, FFN 512
    entropy_bytes = weights * -(SPARSITY * math.log2(SPARSITY) + (1 - SPARSITY) * math.log2(1 - SPARSITY)) / 8
    for row in listing["languages"]:
        assert row["mask_bytes"] <= 1.15 * entropy_bytes + 4096, row
        assert row["backbone_fraction"] == pytest.approx(
            (row["mask_bytes"] + row["head_bytes"]) / listing["backbone_bytes"])
    copy = tmp_path / "copy.pt"
    shutil.copy(path, copy)
    assert cli(["bundles", "remove", str(copy), "es"]) == 0
    assert list(read_bundle(str(copy)).languages) == ["ca", "ast"]
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    other_backbone = load_checkpoint(checkpoints["es"])
    bias = "w2v_encoder.w2v_model.encoder.layers.0.fc1.bias"
    other_backbone["model"][bias] = other_backbone["model"][bias] + 1e-3
    torch.save(other_backbone, tmp_path / "other.pt")
    assert cli(["bundles", "add", str(copy), f"es={tmp_path / 'other.pt'}"]) == 2
    assert f"{bias} differs from the bundle's backbone" in capsys.readouterr().err
    assert cli(["bundles", "add", str(copy), f"ca={checkpoints['ca']}"]) == 2
    assert "holds ca already" in capsys.readouterr().err
    assert list(read_bundle(str(copy)).languages) == ["ca", "ast"]


def test_exporting_a_bundle_language_gives_the_weights_of_that_languages_own_export(bundle, tmp_path):
    """Its own export loads in stock fairseq
    (test_fairseq_generate_decodes_the_learned_mask_checkpoint_and_export_bakes_it_for_stock_fairseq)."""
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    _, path, checkpoints = bundle
    assert cli(["export", str(path), "--language", "ast", "--out", str(tmp_path / "from_bundle.pt")]) == 0
    assert cli(["export", str(checkpoints["ast"]), "--out", str(tmp_path / "own.pt")]) == 0
    from_bundle = load_checkpoint(tmp_path / "from_bundle.pt")
    own = load_checkpoint(tmp_path / "own.pt")
    assert from_bundle["model"].keys() == own["model"].keys()
    assert all(torch.equal(from_bundle["model"][key], own["model"][key]) for key in own["model"])
    assert from_bundle["cfg"]["model"]["_name"] == own["cfg"]["model"]["_name"] == "wav2vec_ctc"
