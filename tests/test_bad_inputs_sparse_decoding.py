"""The "Sparse decoding" catalogue of docs/bad-inputs.md, one test per row (training with the key
set is a row of the training catalogue, tests/test_bad_inputs_training.py).

Each case loads a TINY checkpoint in this process as fairseq-generate loads it (fairseq's
`load_model_ensemble_and_task` with the case's `--model-overrides`), which must raise the documented
message; and each error path runs once as a real fairseq-generate (slow, forked from the session's
fork server): exit status 2, the documented message as the last stderr line, no traceback. The
value check runs in our task's `build_model`, the refusal of a model without masks once the
checkpoint's state is loaded (the masks of a checkpoint without a transform plan come with it),
in the model's `load_state_dict`, which fairseq calls outside the task.
"""
import os
from dataclasses import dataclass
from typing import Dict

import pytest

from factory import write_plugin_checkpoint, write_run_checkpoint
from fairseq_subnets import USER_DIR
from fairseq_subnets.runner import fairseq_command

GENERATE_ERROR = "fairseq-generate: error: "
EXIT_STATUS = 2


@dataclass(frozen=True)
class DecodeCase:
    id: str
    message: str
    """The stable prefix of the last stderr line."""
    checkpoint: str
    """`masked` or `unmasked`."""
    overrides: Dict[str, str]


CASES = [
    DecodeCase("decode-sparse-no-masks", GENERATE_ERROR + "model.sparse_decoding=on: the model holds no masked encoder "
               "matrix, so no sparse kernel would run", "unmasked", {"sparse_decoding": "on"}),
    DecodeCase("decode-sparse-unknown-mode", GENERATE_ERROR + "model.sparse_decoding=fast: choose one of off, on, auto",
               "masked", {"sparse_decoding": "fast"}),
]
CATALOGUE_IDS = tuple(case.id for case in CASES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A folder with a dictionary, a masked TINY checkpoint (fixed masks, no transform plan) and an
    unmasked one."""
    folder = tmp_path_factory.mktemp("sparse_inputs")
    masked, _, _ = write_plugin_checkpoint(folder)
    unmasked = folder / "unmasked.pt"
    write_run_checkpoint(unmasked)
    return folder, {"masked": masked, "unmasked": unmasked}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_sparse_decoding_setting_is_refused_when_the_model_loads(case, checkpoints):
    from fairseq import checkpoint_utils

    from fairseq_subnets.errors import PluginInputError

    folder, paths = checkpoints
    with pytest.raises(PluginInputError) as refused:
        checkpoint_utils.load_model_ensemble_and_task([str(paths[case.checkpoint])],
                                                      arg_overrides={"data": str(folder), **case.overrides})
    assert str(refused.value).startswith(case.message[len(GENERATE_ERROR):])
    assert "\n" not in str(refused.value)


@pytest.mark.slow
def test_bad_sparse_decoding_setting_stops_fairseq_generate_with_one_line(checkpoints, tmp_path, fairseq_launcher):
    folder, paths = checkpoints
    commands = {}
    for case in CASES:
        overrides = "{" + ", ".join(f"'{key}': '{value}'" for key, value in case.overrides.items()) + "}"
        commands[case.id] = (fairseq_command("fairseq-generate"), [
            str(folder), "--path", str(paths[case.checkpoint]), "--task", "subnets_audio_finetuning",
            "--user-dir", USER_DIR, "--labels", "ltr", "--gen-subset", "test", "--cpu",
            "--results-path", str(tmp_path / case.id), "--model-overrides", overrides], tmp_path,
            tmp_path / f"{case.id}.stderr")
    statuses = fairseq_launcher.run_all(commands, {**os.environ, "OMP_NUM_THREADS": "1"})
    for case in CASES:
        stderr = commands[case.id][3].read_text()
        assert statuses[case.id] == EXIT_STATUS, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        assert stderr.strip().splitlines()[-1].startswith(case.message), stderr[-1000:]
