"""A checkpoint holding learned scores (a transform that no mask file describes) in real fairseq:
stock fairseq-generate rebuilds the model from the checkpoint's config and decodes it exactly as
its baked export decodes, and `prune` reads its masks."""
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import two_at_a_time

pytestmark = pytest.mark.slow

FFN = ("fc1", "fc2")


@pytest.fixture(scope="module")
def score_checkpoint(skeleton_run, tmp_path_factory):
    """The skeleton's fine-tuned model with WMI-initialised scores on every FFN matrix at 10%
    sparsity, the scores then moved at random (as training would), saved as a checkpoint."""
    from fairseq import checkpoint_utils

    from fairseq_subnets.techniques.learned_masks.layer import apply_score_masks
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    settings, result = skeleton_run
    out = tmp_path_factory.mktemp("scores")
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([result.finetuned_checkpoint])
    names = [name for name in model.encoder_weight_shapes() if name.rsplit(".", 2)[-2] in FFN]
    generator = torch.Generator().manual_seed(0)
    scores = {}
    for name in names:
        weight = model.get_submodule(W2V_PREFIX + name[: -len(".weight")]).weight.detach()
        scores[name] = weight.abs() * (1 + 0.5 * torch.rand(weight.shape, generator=generator))
    apply_score_masks(model, scores, sparsity=0.1, prefix=W2V_PREFIX, name="s3router")
    checkpoint = load_checkpoint(result.finetuned_checkpoint)
    model_cfg = checkpoint["cfg"]["model"]
    model.record_transform_plan(model_cfg)
    checkpoint["model"] = model.state_dict()
    path = out / "scores.pt"
    torch.save(checkpoint, path)
    return settings, result, path, names


def test_fairseq_generate_rebuilds_learned_scores_and_decodes_like_the_baked_export(score_checkpoint, tmp_path):
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.runner import generate, read_generate_output

    settings, result, path, _ = score_checkpoint
    data = Path(result.corpus_dir) / settings.language
    exported = tmp_path / "plain.pt"
    assert cli(["export", str(path), "--out", str(exported)]) == 0
    with_scores, baked = two_at_a_time((generate, data, path, "test", tmp_path / "scores"),
                                       (generate, data, exported, "test", tmp_path / "baked"))
    assert with_scores.hypotheses == baked.hypotheses == result.test_utterances
    decoded = [read_generate_output(run.results_file.read_text())[:2] for run in (with_scores, baked)]
    assert decoded[0] == decoded[1]
    assert with_scores.cer == baked.cer


def test_prune_and_the_mask_tools_read_a_checkpoints_learned_masks(score_checkpoint, tmp_path):
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.core.parametrize import masks_from_state_dict
    from fairseq_subnets.core.stats import sparsity
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    _, _, path, names = score_checkpoint
    learned = masks_from_state_dict(load_checkpoint(path)["model"])
    assert sorted(learned) == sorted(names)
    assert sparsity(learned) == pytest.approx(0.1, abs=1e-3)

    out = tmp_path / "pruned.mask"
    assert cli(["prune", str(path), "--method", "global-l1", "--sparsity", "0.5", "--out", str(out)]) == 0
    pruned = load_mask_file(str(out)).masks
    for name in names:  # weights under a learned mask are 0 after baking, so pruned first
        assert not (pruned[name] & ~learned[name]).any(), name


def test_learned_scores_and_a_dense_mask_train_resume_and_decode_through_the_stock_commands(skeleton_run,
                                                                                            tmp_path):
    """A model config that declares learned scores on the FFN (here directly through
    `model.transform_plan`; methods will derive it from their own keys) and a dense-storage mask
    file on attention (`+model.mask_storage=dense`) trains with stock fairseq-hydra-train, resumes
    from checkpoint_last.pt with its moved scores and its mask, keeps the exact sparsities, decodes
    and exports."""
    import json

    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.core.maskfile import load_mask_file

    from fairseq_subnets.core.parametrize import masks_from_state_dict
    from fairseq_subnets.core.stats import sparsity
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint
    from fairseq_subnets.runner import generate, hydra_train
    from fairseq_subnets import USER_DIR

    settings, result = skeleton_run
    layers = load_checkpoint(result.pretrained_checkpoint)["cfg"]["model"]["encoder_layers"]
    plan = [{"kind": "score_mask", "name": "learned", "options": {"sparsity": 0.1},
             "weights": [f"encoder.layers.{layer}.{kind}.weight" for layer in range(layers) for kind in FFN]}]
    data = Path(result.corpus_dir) / settings.language
    save_dir = tmp_path / "run"
    mask_path = tmp_path / "attention.mask"
    assert cli(["prune", result.pretrained_checkpoint, "--method", "global-l1", "--sparsity", "0.5", "--targets",
                "attn", "--out", str(mask_path)]) == 0
    overrides = [f"common.user_dir={USER_DIR}", f"task.data={data}", f"model.w2v_path={result.pretrained_checkpoint}",
                 f"checkpoint.save_dir={save_dir}", f"+model.transform_plan='{json.dumps(plan)}'",
                 f"+model.mask_path={mask_path}", "+model.mask_targets=attn", "+model.mask_storage=dense",
                 "checkpoint.save_interval_updates=10", "dataset.validate_interval_updates=10"]
    hydra_train("tiny", overrides + ["optimization.max_update=10"], tmp_path / "first.log")
    first = load_checkpoint(save_dir / "checkpoint_last.pt")
    score_key = next(key for key in first["model"] if key.endswith("score_mask.learned.scores"))
    assert torch.count_nonzero(first["model"][score_key]) > 0  # placeholders were zeros: the scores learned
    log = hydra_train("tiny", overrides + ["optimization.max_update=15"], tmp_path / "resumed.log")
    assert "Loaded checkpoint" in log and "@ 10 updates" in log and "num_updates 15" in log
    last = load_checkpoint(save_dir / "checkpoint_last.pt")
    assert not torch.equal(last["model"][score_key], first["model"][score_key])
    masks = masks_from_state_dict(last["model"])
    attention = load_mask_file(str(mask_path)).masks
    assert len(masks) == 6 * layers
    assert all(torch.equal(masks[name], mask) for name, mask in attention.items())  # the dense mask held
    assert sparsity({name: masks[name] for name in masks if name not in attention}) == pytest.approx(0.1, abs=1e-3)
    exported = tmp_path / "plain.pt"
    assert cli(["export", str(save_dir / "checkpoint_last.pt"), "--out", str(exported)]) == 0
    decoded, baked = two_at_a_time((generate, data, save_dir / "checkpoint_last.pt", "test", tmp_path / "decode"),
                                   (generate, data, exported, "test", tmp_path / "baked"))
    assert decoded.hypotheses == result.test_utterances
    assert baked.cer == decoded.cer
