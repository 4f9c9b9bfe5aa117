"""The "Compact checkpoint" catalogue of docs/bad-inputs.md, one test per row.

The decoding cases run in this process as fairseq-generate runs them (our task set up with the
checkpoint as `common_eval.path`, which checks it before fairseq reads it; or the model loaded and
`prepare_for_inference_` called after the cast `--fp16` makes), and once more as one real
fairseq-generate each (slow): exit status 2, the documented message as the last stderr line, no
traceback. The export cases run the `fairseq-subnets` command in this process.
"""
import os
from dataclasses import dataclass
from typing import Tuple

import pytest
import torch

from checkpoint_helpers import write_test_split
from factory import TINY, ctc_model, write_plugin_checkpoint, write_run_checkpoint
from fairseq_subnets import USER_DIR
from fairseq_subnets.runner import fairseq_command

GENERATE_ERROR = "fairseq-generate: error: "
EXPORT_ERROR = "fairseq-subnets export: error: "
EXIT_STATUS = 2


@dataclass(frozen=True)
class Case:
    id: str
    message: str
    """The stable prefix of the last stderr line; <CKPT> stands for the checkpoint's path."""
    checkpoint: str
    """Which file of the `files` fixture the case reads."""
    extra: Tuple[str, ...] = ()
    compact: bool = True
    """Export cases: whether the command has --compact."""


DECODE_CASES = [
    Case("decode-compact-truncated", GENERATE_ERROR + "<CKPT>: damaged torch checkpoint (truncated", "truncated"),
    Case("decode-compact-tampered", GENERATE_ERROR + "<CKPT>: damaged compact checkpoint (checksum mismatch)",
         "tampered"),
    Case("decode-sparse-fp16", GENERATE_ERROR + "model.sparse_decoding=on: encoder.layers.0.fc1.weight "
         "is float16 on cpu; torch's sparse kernels run float32 and float64 on CPU", "compact", ("--fp16",)),
]
EXPORT_CASES = [
    Case("export-compact-no-masks", EXPORT_ERROR + "<CKPT>: holds no masks (fixed, learned or per-language), so "
         "--compact has no masked matrix to store compactly", "unmasked"),
    Case("export-compact-pretraining", EXPORT_ERROR + "<CKPT>: --compact stores a fine-tuned CTC model (wav2vec_ctc) "
         "for decoding; this is a wav2vec2 model", "pretraining", ("--mask", "<MASK>")),
    Case("export-of-compact", EXPORT_ERROR + "<CKPT>: a compact checkpoint (export --compact), which only decoding "
         "reads: use the checkpoint it was exported from, or its dense export", "compact", compact=False),
    Case("export-compact-hf", EXPORT_ERROR + "--compact writes a fairseq checkpoint for the plugin's sparse path: "
         "it needs --format fairseq", "masked", ("--format", "hf")),
]
TRAINING_ID = "train-compact-checkpoint"
CATALOGUE_IDS = tuple(case.id for case in DECODE_CASES + EXPORT_CASES) + (TRAINING_ID,)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder with a dictionary and a test split (fairseq-generate loads the split before it casts
    the model), a masked TINY checkpoint, its masks as a mask file, an unmasked one, a pretraining
    one, the compact export of the masked one, and two damaged copies of it: cut to half its
    length, and one coded byte flipped (a valid torch file)."""
    from omegaconf import OmegaConf

    from fairseq_subnets.benchmarks.untrained import CtcModelSize, wav2vec2_model_config
    from fairseq_subnets.core.maskfile import save_mask_file
    from fairseq_subnets.plugin.tools.export import export_plain_checkpoint

    folder = tmp_path_factory.mktemp("compact_inputs")
    masked, _, masks = write_plugin_checkpoint(folder, sparsity=0.9, full_task_config=True)
    write_test_split(folder)
    unmasked = folder / "unmasked.pt"
    write_run_checkpoint(unmasked)
    compact = folder / "compact.pt"
    export_plain_checkpoint(str(masked), str(compact), compact=True)
    pretraining = folder / "pretraining.pt"
    save_mask_file(str(folder / "masks.safetensors"), masks, {"method": "random"})
    torch.save({"cfg": {"model": OmegaConf.to_container(wav2vec2_model_config(CtcModelSize(**TINY)), enum_to_str=True)},
                "model": ctc_model().w2v_encoder.w2v_model.state_dict()}, pretraining)
    truncated = folder / "truncated.pt"
    truncated.write_bytes(compact.read_bytes()[:compact.stat().st_size // 2])
    checkpoint = torch.load(compact, weights_only=True)
    stream = next(key for key in checkpoint["model"] if key.endswith("::low_bytes"))
    checkpoint["model"][stream][0] ^= 1
    tampered = folder / "tampered.pt"
    torch.save(checkpoint, tampered)
    return folder, {"masked": masked, "unmasked": unmasked, "compact": compact, "truncated": truncated,
                    "tampered": tampered, "pretraining": pretraining, "mask": folder / "masks.safetensors"}


def decode_in_process(folder, checkpoint, extra):
    """What fairseq-generate does up to its first batch: the task set up with `--path`, the model
    loaded, cast to float16 with `--fp16`, prepared for inference."""
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    from fairseq_subnets.plugin.components.tasks import SubnetsAudioFinetuningConfig

    cfg = OmegaConf.structured(FairseqConfig)
    cfg.task = OmegaConf.merge(OmegaConf.structured(SubnetsAudioFinetuningConfig),
                               {"_name": "subnets_audio_finetuning", "data": str(folder), "labels": "ltr"})
    cfg.common_eval.path = str(checkpoint)
    task = tasks.setup_task(cfg.task)
    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoint)], task=task,
                                                      arg_overrides={"data": str(folder)})
    if "--fp16" in extra:
        models[0].half()
    models[0].prepare_for_inference_(cfg)


@pytest.mark.parametrize("case", DECODE_CASES, ids=[case.id for case in DECODE_CASES])
def test_bad_compact_decoding_is_refused_before_the_first_batch(case, files):
    from fairseq_subnets.plugin.components.errors import INPUT_ERRORS

    folder, paths = files
    with pytest.raises(INPUT_ERRORS) as refused:
        decode_in_process(folder, paths[case.checkpoint], case.extra)
    expected = case.message[len(GENERATE_ERROR):].replace("<CKPT>", str(paths[case.checkpoint]))
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value), str(refused.value)


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[case.id for case in EXPORT_CASES])
def test_bad_compact_export_is_refused_with_one_line(case, files, tmp_path, capsys):
    from fairseq_subnets.cli.main import main

    _, paths = files
    out = tmp_path / "out.pt"
    extra = [str(paths["mask"]) if argument == "<MASK>" else argument for argument in case.extra]
    compact = ["--compact"] if case.compact else []
    assert main(["export", str(paths[case.checkpoint]), *compact, *extra, "--out", str(out)]) == EXIT_STATUS
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(case.message.replace("<CKPT>", str(paths[case.checkpoint]))), last_line
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_bad_compact_decoding_stops_fairseq_generate_with_one_line(files, tmp_path, fairseq_launcher):
    folder, paths = files
    commands = {}
    for case in DECODE_CASES:
        commands[case.id] = (fairseq_command("fairseq-generate"), [
            str(folder), "--path", str(paths[case.checkpoint]), "--task", "subnets_audio_finetuning",
            "--user-dir", USER_DIR, "--labels", "ltr", "--gen-subset", "test", "--cpu", *case.extra,
            "--results-path", str(tmp_path / case.id)], tmp_path, tmp_path / f"{case.id}.stderr")
    statuses = fairseq_launcher.run_all(commands, {**os.environ, "OMP_NUM_THREADS": "1"})
    for case in DECODE_CASES:
        stderr = commands[case.id][3].read_text()
        assert statuses[case.id] == EXIT_STATUS, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        expected = case.message.replace("<CKPT>", str(paths[case.checkpoint]))
        assert stderr.strip().splitlines()[-1].startswith(expected), stderr[-1000:]


def test_train_compact_checkpoint():
    """Catalogue row `train-compact-checkpoint`: the check our task runs before a training run
    builds its model (refuse_decoding_only_keys) refuses the key a compact checkpoint's config sets."""
    from omegaconf import OmegaConf

    from fairseq_subnets.errors import PluginInputError
    from fairseq_subnets.plugin.components.models import TECHNIQUES
    from fairseq_subnets.techniques.extension import refuse_decoding_only_keys

    with pytest.raises(PluginInputError, match=r"^model\.compact_checkpoint=True marks a compact checkpoint "
                                               r"\(export --compact\), which only decoding reads: train from"):
        refuse_decoding_only_keys(TECHNIQUES, OmegaConf.create({"compact_checkpoint": True}))
