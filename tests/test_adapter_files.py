"""Adapter files as safe as mask files, on a TINY tuner checkpoint built in-process: the checksum
catches a flipped byte and an edited option, `info` and `apply` read the same run config, `apply`
checks the rebuilt checkpoint against its model and reads the written file back before renaming
it, version 1 files (no checksum) are read with one line saying so, and the trained-parameter
count is the optimizer's. Runs of real training are in test_tuners_training."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from factory import write_run_checkpoint
from fairseq_subnets.cli.main import main as cli

METHOD_OPTIONS = {"lora": {}, "alpha_lora": {}, "adalora": {"tuner_total_updates": 10}, "s2lora": {}, "ia3": {},
                  "bitfit": {}, "glora": {}}


def rewritten(source, out, version=None, drop=None, reshape=None, **metadata_changes):
    """A copy of adapter file `source` at `out` with metadata entries changed, a tensor dropped or
    reshaped; `version="1"` writes it as 0.4.0 did (no checksum). The checksum is left as it was,
    so any change shows as damage unless the copy is a version 1 file."""
    with safe_open(str(source), framework="pt") as reader:
        metadata = dict(reader.metadata())
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    if version is not None:
        metadata["version"] = version
        if version == "1":
            metadata.pop("sha256")
    if drop is not None:
        del tensors[drop]
    if reshape is not None:
        tensors[reshape] = tensors[reshape].reshape(-1)
    metadata.update(metadata_changes)
    save_file(tensors, str(out), metadata=metadata)
    return out


def edited_cfg(source, change):
    """The `cfg` metadata of `source` with `change(cfg)` applied, as text."""
    with safe_open(str(source), framework="pt") as reader:
        cfg = json.loads(reader.metadata()["cfg"])
    change(cfg)
    return json.dumps(cfg)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """(checkpoint, adapter file, model) of a LoRA run."""
    folder = tmp_path_factory.mktemp("tuned")
    model = write_run_checkpoint(folder / "lora.pt", tuner="lora")
    assert cli(["adapters", "save", str(folder / "lora.pt"), "--out", str(folder / "lora.adapter")]) == 0
    return folder / "lora.pt", folder / "lora.adapter", model


def optimizer_count(model):
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


@pytest.mark.parametrize("method", METHOD_OPTIONS)
def test_the_trained_count_is_the_optimizers_for_every_method(method, tmp_path, capsys):
    from fairseq_subnets.plugin.formats.adapters import adapter_of_checkpoint

    model = write_run_checkpoint(tmp_path / "run.pt", tuner=method, **METHOD_OPTIONS[method])
    expected = optimizer_count(model)
    assert adapter_of_checkpoint(str(tmp_path / "run.pt")).trained_count() == expected
    assert cli(["adapters", "save", str(tmp_path / "run.pt"), "--out", str(tmp_path / "run.adapter")]) == 0
    assert f"{expected:,} trained parameters" in capsys.readouterr().out
    assert cli(["adapters", "info", str(tmp_path / "run.adapter"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trained_parameters"] == expected


def test_apply_rebuilds_the_run_and_its_output_loads(tuned, tmp_path):
    from fairseq_subnets.plugin.formats.checkpoints import load_fairseq_checkpoint

    checkpoint, adapter, _ = tuned
    out = tmp_path / "rebuilt.pt"
    assert cli(["adapters", "apply", str(adapter), "--backbone", str(checkpoint), "--out", str(out)]) == 0
    original, rebuilt = load_fairseq_checkpoint(str(checkpoint))["model"], load_fairseq_checkpoint(str(out))["model"]
    assert original.keys() == rebuilt.keys()
    assert all(torch.equal(original[key], rebuilt[key]) for key in original)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rebuilt.pt"]


@pytest.mark.parametrize("where", ["last tensor byte", "metadata option"])
def test_the_checksum_catches_a_flipped_byte_and_an_edited_option(tuned, tmp_path, where, capsys):
    _, adapter, _ = tuned
    damaged = tmp_path / "damaged.adapter"
    if where == "last tensor byte":
        data = bytearray(adapter.read_bytes())
        data[-3] ^= 0x01
        damaged.write_bytes(bytes(data))
    else:
        rewritten(adapter, damaged, cfg=edited_cfg(adapter, lambda cfg: cfg["model"].update(tuner_alpha=80.0)))
    for command in (["info", str(damaged)], ["apply", str(damaged), "--backbone", str(tuned[0]),
                                              "--out", str(tmp_path / "out.pt")]):
        assert cli(["adapters", *command]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"fairseq-subnets adapters: error: {damaged}: damaged adapter file (checksum mismatch")
    assert not (tmp_path / "out.pt").exists()


def test_info_shows_the_options_apply_builds(tuned, tmp_path, capsys):
    """The options shown come from the stored run config's transform plan, which apply builds."""
    checkpoint, adapter, _ = tuned
    edited = rewritten(adapter, tmp_path / "alpha.adapter",
                       cfg=edited_cfg(adapter, lambda cfg: cfg["model"].update(transform_plan=cfg["model"][
                           "transform_plan"].replace('"alpha": 8.0', '"alpha": 80.0'))), version="1")
    assert cli(["adapters", "info", str(edited), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transforms"] == [{"kind": "lora", "options": {"r": 8, "alpha": 80.0}, "matrices": 4}]
    assert cli(["adapters", "apply", str(edited), "--backbone", str(checkpoint), "--out", str(tmp_path / "a.pt")]) == 0
    from fairseq_subnets.plugin.formats.checkpoints import load_fairseq_checkpoint

    plan = json.loads(load_fairseq_checkpoint(str(tmp_path / "a.pt"))["cfg"]["model"]["transform_plan"])
    assert plan[0]["options"]["alpha"] == 80.0


def test_a_version_1_file_is_read_with_one_line_saying_it_has_no_checksum(tuned, tmp_path, capsys):
    checkpoint, adapter, _ = tuned
    old = rewritten(adapter, tmp_path / "old.adapter", version="1")
    assert cli(["adapters", "info", str(old), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checksum"].startswith(f"{old}: a version 1 adapter file, which has "
                                                                      "no checksum")
    assert cli(["adapters", "apply", str(old), "--backbone", str(checkpoint), "--out", str(tmp_path / "out.pt")]) == 0
    assert f"{old}: a version 1 adapter file, which has no checksum" in capsys.readouterr().err
    assert (tmp_path / "out.pt").exists()


def test_a_checkpoint_that_does_not_read_back_is_never_renamed_into_place(tuned, tmp_path, monkeypatch, capsys):
    """What the written file reads back as is compared with what was meant; here the read-back is
    made to lose one tensor, as a disk that dropped bytes would."""
    from fairseq_subnets.plugin.formats import checked_checkpoints

    checkpoint, adapter, _ = tuned
    real_load = checked_checkpoints.load_fairseq_checkpoint

    def losing_a_tensor(path):
        loaded = real_load(path)
        loaded["model"].pop(sorted(loaded["model"])[-1])
        return loaded

    monkeypatch.setattr(checked_checkpoints, "load_fairseq_checkpoint", losing_a_tensor)
    out = tmp_path / "out.pt"
    assert cli(["adapters", "apply", str(adapter), "--backbone", str(checkpoint), "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"fairseq-subnets adapters: error: {out}: the written checkpoint does not read back"), line
    assert list(tmp_path.iterdir()) == []


def test_apply_never_reads_the_training_time_inputs_of_the_run(tmp_path):
    """A run started from an upstream checkpoint (`model.init_from`) records it in its config; the
    model apply builds to check the checkpoint, as fairseq-generate's, does not read it."""
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    write_run_checkpoint(tmp_path / "run.pt", tuner="lora")
    checkpoint = load_checkpoint(str(tmp_path / "run.pt"))
    checkpoint["cfg"]["model"]["init_from"] = str(tmp_path / "upstream-elsewhere.pt")
    torch.save(checkpoint, tmp_path / "run.pt")
    assert cli(["adapters", "save", str(tmp_path / "run.pt"), "--out", str(tmp_path / "run.adapter")]) == 0
    assert cli(["adapters", "apply", str(tmp_path / "run.adapter"), "--backbone", str(tmp_path / "run.pt"),
                "--out", str(tmp_path / "rebuilt.pt")]) == 0


def test_an_adapter_file_that_does_not_read_back_is_never_renamed_into_place(tuned, tmp_path, monkeypatch, capsys):
    from fairseq_subnets.plugin.formats import adapters

    checkpoint, _, _ = tuned
    real_read = adapters.read_adapter_file

    def nudged(path):
        adapter = real_read(path)
        adapter.tensors[sorted(adapter.tensors)[0]] = adapter.tensors[sorted(adapter.tensors)[0]] + 1
        return adapter

    monkeypatch.setattr(adapters, "read_adapter_file", nudged)
    out = tmp_path / "run.adapter"
    assert cli(["adapters", "save", str(checkpoint), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"fairseq-subnets adapters: error: {out}: the written adapter file does not read back as written; nothing "
        "was written")
    assert list(tmp_path.iterdir()) == []
