"""Tuners in real fairseq runs: stock fairseq-hydra-train with the shipped `s2lora_tiny` and
`adalora_tiny` configs on 2 CPU ranks (gloo), on the skeleton's synthesized speech and tiny
pretrained model. The backbone stays bit-identical, the optimizer holds only the tuner and the
output layer, S2-LoRA's shared factors stay one tensor in checkpoints and its regularisation terms
are logged, AdaLoRA's allocator ends at its target budget with the same triplets on both ranks;
stock fairseq-generate decodes the checkpoint, and its export loads in stock fairseq without the
plugin and gives the same logits. DoRA and VeRA train with their shipped tiny configs, resume,
decode, export and travel as adapter files (VeRA's frozen bases with them, once).
Resuming after a kill, bit for bit, is in test_reproducible_training (mode tuner_adalora)."""
import re
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import assert_decodes_and_exports_to_stock_fairseq, two_at_a_time
from fairseq_subnets import USER_DIR

pytestmark = pytest.mark.slow

LANGUAGE = "ca"


def overrides(result, save_dir, *extra):
    return [f"common.user_dir={USER_DIR}", f"task.data={Path(result.corpus_dir) / LANGUAGE}",
            f"model.w2v_path={result.pretrained_checkpoint}", f"checkpoint.save_dir={save_dir}", *extra]


@pytest.fixture(scope="module")
def s2lora_run(skeleton_run, tmp_path_factory):
    """Two gloo ranks (`fairseq-subnets launch`), 20 updates, fairseq's encoder freeze set as stock
    recipes set it (it must not stop the tuner)."""
    from fairseq_subnets.cli.main import main as cli

    _, result = skeleton_run
    out = tmp_path_factory.mktemp("s2lora")
    arguments = ["--config-dir", str(Path(USER_DIR) / "config" / "finetune"), "--config-name", "s2lora_tiny",
                 *overrides(result, out / "run", "optimization.max_update=20", "dataset.validate_interval_updates=10",
                            "model.freeze_finetune_updates=1000")]
    assert cli(["launch", "--nprocs", "2", "--log-dir", str(out), "--", *arguments]) == 0
    return result, out / "run", (out / "train_rank0.log").read_text()


@pytest.fixture(scope="module")
def adalora_run(skeleton_run, tmp_path_factory):
    """Two gloo ranks, 20 updates: the full budget for 2 updates, shrinking until update 14,
    masking every 2nd update, then at the target."""
    from fairseq_subnets.cli.main import main as cli

    _, result = skeleton_run
    out = tmp_path_factory.mktemp("adalora")
    arguments = ["--config-dir", str(Path(USER_DIR) / "config" / "finetune"), "--config-name", "adalora_tiny",
                 *overrides(result, out / "run", "optimization.max_update=20", "model.tuner_warmup_updates=2",
                            "model.tuner_final_updates=6", "model.tuner_interval=2", "dataset.disable_validation=true",
                            "common.log_interval=1")]
    assert cli(["launch", "--nprocs", "2", "--log-dir", str(out), "--", *arguments]) == 0
    return result, out / "run", (out / "train_rank0.log").read_text()


def backbone_differences(state, pretrained):
    """wav2vec2 tensors of a tuned checkpoint that differ from the pretrained model's, and how
    many were compared (stored weights and biases under their plain names)."""
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    different, compared = [], 0
    for key, value in state.items():
        if not key.startswith(W2V_PREFIX) or (".parametrizations." in key and not key.endswith(".original")):
            continue
        name = key[len(W2V_PREFIX):].replace(".parametrizations.weight.original", ".weight")
        name = name.replace(".parametrizations.bias.original", ".bias")
        compared += 1
        if not torch.equal(value, pretrained[name]):
            different.append(key)
    return different, compared


def test_s2lora_trains_on_two_ranks_leaving_the_backbone_bit_identical(s2lora_run):
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    result, run_dir, log = s2lora_run
    assert "regulariser_s2lora_sparsity" in log and "regulariser_s2lora_factors" in log, log[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint_last.pt")
    state = checkpoint["model"]
    different, compared = backbone_differences(state, load_checkpoint(result.pretrained_checkpoint)["model"])
    assert not different and compared > 50
    shared = {state[k].data_ptr() for k in state if k.endswith(".shared_A")}
    matrices = 6 * 3  # every matrix of the skeleton's 3 layers; one stored shared_A key per matrix
    assert len(shared) == 3 and sum(k.endswith(".shared_A") for k in state) == matrices
    coefficients = [state[k] for k in state if k.endswith(".coefficients")]
    assert len(coefficients) == matrices and all(c.abs().sum() > 0 for c in coefficients)
    adam = checkpoint["last_optimizer_state"]["state"]
    assert len(adam) == 3 * 2 + matrices + 2  # shared pairs, coefficient vectors, output layer weight and bias


def test_fairseq_generate_decodes_the_tuned_checkpoint_and_export_merges_it_for_stock_fairseq(s2lora_run, tmp_path):
    result, run_dir, _ = s2lora_run
    assert_decodes_and_exports_to_stock_fairseq(run_dir / "checkpoint_last.pt", Path(result.corpus_dir) / LANGUAGE,
                                                tmp_path)


def test_adalora_ranks_print_as_a_layer_by_matrix_table_csv_and_heatmap(adalora_run, tmp_path, capsys):
    from fairseq_subnets.cli.main import main as cli

    _, run_dir, _ = adalora_run
    csv_path, png_path = tmp_path / "ranks.csv", tmp_path / "ranks.png"
    assert cli(["adapters", "ranks", str(run_dir / "checkpoint_last.pt"), "--csv-out", str(csv_path),
                "--plot", str(png_path)]) == 0
    out = capsys.readouterr().out
    assert "adalora, 48 ranks in use over 6 matrices" in out
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "layer,q,k,v,out,fc1,fc2" and len(lines) == 4
    assert sum(int(cell) for line in lines[1:] for cell in line.split(",")[1:] if cell != "-") == 48
    assert all(line.split(",")[2] == "-" for line in lines[1:])  # k is not adapted
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adalora_ends_at_its_target_budget_with_the_backbone_untouched(adalora_run):
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    result, run_dir, log = adalora_run
    assert "adalora_budget" in log, log[-3000:]
    state = load_checkpoint(run_dir / "checkpoint_last.pt")["model"]
    different, _ = backbone_differences(state, load_checkpoint(result.pretrained_checkpoint)["model"])
    assert not different
    kept = {k: state[k] for k in state if k.endswith(".adalora.tuner.kept")}
    assert len(kept) == 6 and sum(int(v.sum()) for v in kept.values()) == 8 * 6  # q and v of 3 layers
    for key, mask in kept.items():
        singular_values = state[key.replace(".kept", ".lora_E")]
        assert torch.equal(singular_values != 0, mask)


def test_both_ranks_keep_the_same_adalora_triplets_at_every_epoch(adalora_run):
    """The per-epoch check compares a digest of the kept triplets across ranks: it must have run
    after the allocator masked (the digest changed from epoch to epoch)."""
    _, _, log = adalora_run
    digests = re.findall(r"encoder masks identical on all 2 ranks \(sha256 (\w+)\)", log)
    assert len(set(digests)) >= 2 and "none" not in digests, log[-3000:]


def logits_of(checkpoint, data, utterances=3):
    """Logits of the first test utterances from `checkpoint`, loaded as fairseq-generate loads it."""
    from fairseq import checkpoint_utils

    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                      arg_overrides={"data": str(data)})
    task.load_dataset("test")
    sample = task.dataset("test").collater([task.dataset("test")[i] for i in range(utterances)])
    with torch.no_grad():
        return model.eval().get_logits(model(**sample["net_input"]))


def test_an_adapter_file_rebuilds_the_run_on_its_backbone_and_refuses_another(s2lora_run, tmp_path, capsys):
    """The file holds only what trained (a fraction of the checkpoint's bytes); applied to the
    pretraining checkpoint it gives the run's logits exactly; a backbone one weight away from it
    is refused and nothing is written."""
    import json

    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    result, run_dir, _ = s2lora_run
    checkpoint = run_dir / "checkpoint_last.pt"
    adapter = tmp_path / "ca.adapter"
    assert cli(["adapters", "save", str(checkpoint), "--out", str(adapter)]) == 0
    assert "s2lora adapter" in capsys.readouterr().out
    assert adapter.stat().st_size < 0.1 * checkpoint.stat().st_size
    assert cli(["adapters", "info", str(adapter), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "s2lora" and info["trained_parameters"] > 0

    rebuilt = tmp_path / "rebuilt.pt"
    assert cli(["adapters", "apply", str(adapter), "--backbone", str(result.pretrained_checkpoint),
                "--out", str(rebuilt)]) == 0
    data = Path(result.corpus_dir) / LANGUAGE
    assert torch.equal(logits_of(rebuilt, data), logits_of(checkpoint, data))

    other = load_checkpoint(result.pretrained_checkpoint)
    other["model"]["encoder.layers.0.fc1.bias"] = other["model"]["encoder.layers.0.fc1.bias"] + 1e-3
    torch.save(other, tmp_path / "other.pt")
    capsys.readouterr()
    assert cli(["adapters", "apply", str(adapter), "--backbone", str(tmp_path / "other.pt"),
                "--out", str(tmp_path / "refused.pt")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"fairseq-subnets adapters: error: {adapter}: made for another backbone"), line
    assert not (tmp_path / "refused.pt").exists()


@pytest.mark.parametrize("run", ["s2lora_run", "adalora_run"])
def test_adapters_save_and_info_count_what_the_optimizer_trains(run, request, tmp_path, capsys):
    """The count is the optimizer's (its Adam state: one exp_avg per trained tensor), not the
    tuner state's, which also holds buffers (AdaLoRA's importance statistics, kept flags)."""
    import json

    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    _, run_dir, _ = request.getfixturevalue(run)
    checkpoint = run_dir / "checkpoint_last.pt"
    adam = load_checkpoint(str(checkpoint))["last_optimizer_state"]["state"]
    trained = sum(entry["exp_avg"].numel() for entry in adam.values())
    assert cli(["adapters", "save", str(checkpoint), "--out", str(tmp_path / "run.adapter")]) == 0
    assert f"{trained:,} trained parameters" in capsys.readouterr().out
    assert cli(["adapters", "info", str(tmp_path / "run.adapter"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trained_parameters"] == trained


NEW_TUNERS = ("dora", "vera")


@pytest.fixture(scope="module")
def new_tuner_runs(skeleton_run, tmp_path_factory):
    """DoRA and VeRA side by side, each with its shipped tiny config on one process: 10 updates (the
    fewest that give the tri-stage schedule a warm-up update), then resumed to 12 from its
    checkpoint_last.pt (fairseq's own resume)."""
    from fairseq_subnets.runner import hydra_train

    _, result = skeleton_run
    out = tmp_path_factory.mktemp("new_tuners")

    def train_and_resume(method):
        settings = overrides(result, out / method, "dataset.disable_validation=true")
        hydra_train(f"{method}_tiny", [*settings, "optimization.max_update=10"], out / f"{method}.log")
        return out / method, hydra_train(f"{method}_tiny", [*settings, "optimization.max_update=12"],
                                         out / f"{method}_resumed.log")

    return result, dict(zip(NEW_TUNERS, two_at_a_time(*((train_and_resume, method) for method in NEW_TUNERS))))


@pytest.mark.parametrize("method", NEW_TUNERS)
def test_dora_and_vera_train_resume_decode_export_and_travel_as_adapter_files(method, new_tuner_runs, tmp_path,
                                                                                capsys):
    import json

    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.techniques.tuners import tuner_trained_count
    from fairseq_subnets.techniques.tuners.vera import random_bases
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    result, runs = new_tuner_runs
    run_dir, resumed_log = runs[method]
    checkpoint = run_dir / "checkpoint_last.pt"
    loaded = load_checkpoint(checkpoint)
    assert re.search(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch \d+ @ 10 updates\)", resumed_log), resumed_log[-3000:]
    assert loaded["optimizer_history"][-1]["num_updates"] == 12
    state = loaded["model"]
    different, _ = backbone_differences(state, load_checkpoint(result.pretrained_checkpoint)["model"])
    assert not different
    trained = [key for key in state if f".{method}.tuner." in key and key.endswith((".lora_B", ".lambda_b"))]
    assert len(trained) == 2 * 3 and all(state[key].abs().sum() > 0 for key in trained)  # q and v of 3 layers
    if method == "vera":
        bases = {key: state[key] for key in state if key.endswith((".vera_A", ".vera_B"))}
        assert len(bases) == 2 * 6 and len({value.data_ptr() for value in bases.values()}) == 2
        width = state[next(iter(bases)).rsplit(".parametrizations.", 1)[0] + ".parametrizations.weight.original"].shape[0]
        drawn = dict(zip(("vera_A", "vera_B"), random_bases(256, width, width, 0)))
        assert all(torch.equal(value, drawn[key.rsplit(".", 1)[1]]) for key, value in bases.items())
    data = Path(result.corpus_dir) / LANGUAGE
    assert_decodes_and_exports_to_stock_fairseq(checkpoint, data, tmp_path)

    adapter = tmp_path / f"{method}.adapter"
    assert cli(["adapters", "save", str(checkpoint), "--out", str(adapter)]) == 0
    capsys.readouterr()
    assert cli(["adapters", "info", str(adapter), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    head = sum(state[key].numel() for key in ("w2v_encoder.proj.weight", "w2v_encoder.proj.bias"))
    assert info["method"] == method and info["trained_parameters"] == tuner_trained_count(state) + head
    rebuilt = tmp_path / "rebuilt.pt"
    assert cli(["adapters", "apply", str(adapter), "--backbone", str(result.pretrained_checkpoint),
                "--out", str(rebuilt)]) == 0
    assert torch.equal(logits_of(rebuilt, data), logits_of(checkpoint, data))
