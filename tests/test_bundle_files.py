"""Bundles as safe as adapter files, on TINY learned-mask checkpoints built in-process: the record's
checksum catches a changed tensor, the layout is checked on reading (masks, output layers against
their dictionaries), a bundle that does not read back is never renamed into place, and version 1
bundles (no checksum) are read with one line saying so and rewritten as version 2. Bundles of real
training runs, decoded by fairseq-generate, are in test_learned_masks_training."""
import pytest
import torch

from factory import write_run_checkpoint
from fairseq_subnets.cli.main import main as cli


def write_language_runs(folder):
    """es.pt and ca.pt: two learned-mask runs on the same backbone."""
    for language in ("es", "ca"):
        write_run_checkpoint(folder / f"{language}.pt", score_sparsity=0.5)
    return [f"es={folder / 'es.pt'}", f"ca={folder / 'ca.pt'}"]


def changed_bundle(source, out, version=None, change=None):
    """A copy of bundle `source` at `out`, its record's version set (1: written as 0.4.0 wrote it,
    without a checksum) and `change(checkpoint)` applied; the checksum is left as it was."""
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(str(source))
    if version is not None:
        checkpoint["bundle"]["version"] = version
        if version == 1:
            checkpoint["bundle"].pop("sha256")
    if change is not None:
        change(checkpoint)
    torch.save(checkpoint, out)
    return out


def nudge_head_bias(checkpoint):
    """One value of the es output layer changed: damage only the bundle's checksum can catch."""
    checkpoint["model"]["language_heads.es.bias"][0] += 1e-3


def drop_head_row(checkpoint):
    key = "language_heads.ca.weight"
    checkpoint["model"][key] = checkpoint["model"][key][:-1].clone()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    sources = write_language_runs(folder)
    assert cli(["bundles", "build", *sources, "--out", str(folder / "bundle.pt")]) == 0
    return folder / "bundle.pt"


def last_error(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_built_bundle_holds_a_checksum_and_loads_into_its_model(bundle):
    from fairseq_subnets.plugin.formats.bundles import read_bundle
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    assert len(load_checkpoint(str(bundle))["bundle"]["sha256"]) == 64
    assert read_bundle(str(bundle)).checksummed


def test_a_changed_tensor_is_caught_by_the_checksum(bundle, tmp_path, capsys):
    damaged = changed_bundle(bundle, tmp_path / "damaged.pt", change=nudge_head_bias)
    assert cli(["bundles", "list", str(damaged)]) == 2
    assert last_error(capsys) == (f"fairseq-subnets bundles: error: {damaged}: damaged bundle (checksum mismatch: its "
                                  "tensors, config or record changed since it was written)")


def test_a_version_1_bundle_is_read_with_one_line_and_rewritten_as_version_2(bundle, tmp_path, capsys):
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    old = changed_bundle(bundle, tmp_path / "old.pt", version=1)
    assert cli(["bundles", "list", str(old)]) == 0
    assert f"{old}: a version 1 bundle, which has no checksum" in capsys.readouterr().err
    assert cli(["bundles", "remove", str(old), "ca"]) == 0
    assert load_checkpoint(str(old))["bundle"]["version"] == 2 and cli(["bundles", "list", str(old)]) == 0


def test_a_version_1_bundle_whose_output_layer_lost_a_row_is_refused(bundle, tmp_path, capsys):
    edited = changed_bundle(bundle, tmp_path / "edited.pt", version=1, change=drop_head_row)
    assert cli(["bundles", "add", str(edited), f"pl={tmp_path / 'none.pt'}"]) == 2
    assert last_error(capsys).startswith(f"fairseq-subnets bundles: error: {edited}: the record's dictionary of ca "
                                         "holds 32 symbols but its output layer language_heads.ca.weight "
                                         "has 31 rows")


def test_a_bundle_that_does_not_read_back_is_never_renamed_into_place(bundle, tmp_path, monkeypatch, capsys):
    from fairseq_subnets.plugin.formats import checked_checkpoints

    real_load = checked_checkpoints.load_fairseq_checkpoint

    def nudged(path):
        loaded = real_load(path)
        loaded["model"]["language_heads.es.bias"][0] += 1
        return loaded

    monkeypatch.setattr(checked_checkpoints, "load_fairseq_checkpoint", nudged)
    out = tmp_path / "copy.pt"
    copy = changed_bundle(bundle, out)
    before = copy.read_bytes()
    assert cli(["bundles", "remove", str(copy), "ca"]) == 2
    assert last_error(capsys).startswith(f"fairseq-subnets bundles: error: {copy}: the written checkpoint does not "
                                         "read back as written (language_heads.es.bias differs)")
    assert copy.read_bytes() == before and sorted(path.name for path in tmp_path.iterdir()) == ["copy.pt"]
