"""`fairseq-subnets bench rehearsal` at a small shape: the XLS-R workflow end to end through the
real commands (data synth, prune, a damaged mask refused by stock fairseq-hydra-train, stock
fairseq-hydra-train on the shipped xlsr_300m config, stock
fairseq-generate, export, a stock fairseq load without the plugin, then learned-mask and S2-LoRA
training on their shipped XLS-R configs), with a wall time and a peak
RSS for every step. The 300M run itself is not a test (minutes and gigabytes); see the README."""
import json

import pytest
import torch

from checkpoint_helpers import assert_pruned_weights_zero
from fairseq_subnets.cli.main import main

SMALL = ["--layers", "2", "--width", "256", "--ffn", "512", "--heads", "4"]
"""The narrowest encoder the shipped config's channel masking accepts (see RehearsalSettings.check)."""
STEPS = ["synthesize speech", "build pretrained model", "prune (global L1)", "bad mask_path refused", "fixed-mask training",
         "decode (fairseq-generate)", "export", "load export, stock fairseq", "learned-mask training",
         "tuner training (S2-LoRA)"]


@pytest.mark.slow
def test_every_step_runs_and_reports_its_wall_time_and_peak_memory(tmp_path, capsys, monkeypatch):
    from fairseq_subnets.core.maskfile import load_mask_file

    monkeypatch.chdir(tmp_path)  # a relative --out, as `make bench-rehearsal` passes it
    out = tmp_path / "rehearsal"
    assert main(["bench", "rehearsal", "--out", "rehearsal", *SMALL, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads((out / "rehearsal.json").read_text()) == result

    assert [record["step"] for record in result["steps"]] == STEPS
    for record in result["steps"]:
        assert record["exit_status"] == 0, record
        assert record["wall_s"] > 0, record
        assert 50 * 2 ** 10 < record["peak_rss_kib"] < 4 * 2 ** 20, record  # a Python process, not gigabytes
    assert result["within_budget"] and result["peak_rss_gib"] == max(r["peak_rss_gib"] for r in result["steps"])

    facts = {record["step"]: record["facts"] for record in result["steps"]}
    assert facts["synthesize speech"] == {"train": 4, "valid": 2, "test": 2}
    pruned = facts["prune (global L1)"]
    assert pruned["weights"] - pruned["kept"] == round(0.9 * pruned["weights"])
    refused = facts["bad mask_path refused"]
    assert 0 < refused["refused_in_s"] < refused["command_s"]
    assert facts["fixed-mask training"]["updates"] == 2
    assert facts["learned-mask training"]["updates"] == facts["tuner training (S2-LoRA)"]["updates"] == 2
    assert facts["tuner training (S2-LoRA)"]["trained_values"] < facts["learned-mask training"]["trained_values"]
    assert facts["decode (fairseq-generate)"]["utterances"] == 2
    stock = facts["load export, stock fairseq"]
    assert (stock["model"], stock["task"], stock["finite"]) == ("Wav2VecCtc", "audio_finetuning", True)

    assert_pruned_weights_zero(out / "finetune" / "checkpoint_last.pt", load_mask_file(str(out / "mask.safetensors")).masks)
    exported = torch.load(out / "exported.pt", weights_only=True)
    assert exported["cfg"]["model"]["_name"] == "wav2vec_ctc"
    assert not any(".parametrizations." in key for key in exported["model"])


@pytest.mark.parametrize("argv, message", [
    (["--width", "128", "--heads", "2"], "width 128 is too narrow for the shipped config's channel masking"),
    (["--width", "300"], "width 300 is not a multiple of the 16 attention heads"),
    (["--sparsity", "1"], "sparsity must lie in (0, 1)"),
])
def test_bad_settings_fail_before_anything_runs(argv, message, tmp_path, capsys):
    assert main(["bench", "rehearsal", "--out", str(tmp_path / "new"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_folder_with_files_in_it_is_refused(tmp_path, capsys):
    (tmp_path / "checkpoint_last.pt").write_text("")
    assert main(["bench", "rehearsal", "--out", str(tmp_path)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
