"""Mask files: exact round trip, <= 1.02 bits per weight, no pickle, atomic writes, a checksum over
bits and shapes, version 1 files still read, and errors that name the file and the first mismatch."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from factory import BASE, encoder_shapes
from fairseq_subnets.core.maskfile import (
    MaskFileError,
    checkpoint_fingerprint,
    load_mask_file,
    save_mask_file,
    write_atomically,
)
from fairseq_subnets.core.pruning import random_masks

SHAPES = {"encoder.layers.0.self_attn.q_proj.weight": (12, 12), "encoder.layers.0.fc1.weight": (7, 13)}


@pytest.fixture
def masks():
    return random_masks(SHAPES, 0.4, seed=1)


def flip_a_stored_bit(path):
    """Flips one bit of the packed masks (the tensor data ends the file)."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))


def tamper(path, shapes=None, **metadata):
    """Rewrites a mask file's metadata in place as an editor would: `shapes` ([name, shape] pairs)
    replaces the 'shapes' entry, other keywords replace theirs; the packed bits stay as they are."""
    with safe_open(str(path), framework="numpy") as reader:
        tensors = {name: reader.get_tensor(name) for name in reader.keys()}
        header = dict(reader.metadata())
    if shapes is not None:
        header["shapes"] = json.dumps(shapes)
    header.update(metadata)
    save_file(tensors, str(path), metadata=header)


def write_version_1_file(path, masks):
    """A mask file as version 1 wrote it: the same layout, its sha256 over the packed bits only."""
    packed = {name: np.packbits(mask.numpy().reshape(-1), bitorder="little") for name, mask in masks.items()}
    digest = hashlib.sha256(b"".join(bits.tobytes() for bits in packed.values())).hexdigest()
    save_file(packed, str(path), metadata={
        "format": "fairseq-subnets-masks", "format_version": "1", "method": "random",
        "shapes": json.dumps([[name, list(mask.shape)] for name, mask in masks.items()]), "sha256": digest})


def test_round_trip_keeps_masks_order_and_metadata(tmp_path, masks):
    path = str(tmp_path / "m.safetensors")
    save_mask_file(path, masks, {"method": "random", "sparsity": 0.4, "seed": 1})
    loaded = load_mask_file(path)
    assert list(loaded.masks) == list(masks)
    assert all(torch.equal(loaded.masks[n], m) and loaded.masks[n].dtype == torch.bool for n, m in masks.items())
    assert loaded.metadata["method"] == "random" and loaded.metadata["sparsity"] == "0.4"
    assert loaded.metadata["format"] == "fairseq-subnets-masks" and loaded.metadata["format_version"] == "2"
    assert loaded.shapes() == SHAPES
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_file_size_is_at_most_1_02_bits_per_weight_for_an_encoder(tmp_path):
    shapes = encoder_shapes(**BASE)
    path = str(tmp_path / "base.safetensors")
    save_mask_file(path, {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()},
                   {"method": "global-l1", "sparsity": 0.5, "source_fingerprint": "x" * 80})
    weights = sum(a * b for a, b in shapes.values())
    assert 8 * os.path.getsize(path) / weights <= 1.02


def test_loading_never_unpickles(tmp_path):
    path = tmp_path / "pickle.safetensors"
    torch.save({"masks": torch.ones(3)}, path)
    with pytest.raises(MaskFileError, match="pickle.safetensors: not a readable mask file"):
        load_mask_file(str(path))


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_truncated_file_fails_naming_it(tmp_path, masks, keep):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), masks)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(MaskFileError, match="m.safetensors"):
        load_mask_file(str(path))


def test_flipped_bit_is_caught_by_the_checksum(tmp_path, masks):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), masks)
    flip_a_stored_bit(path)
    with pytest.raises(MaskFileError, match="m.safetensors: damaged mask file \\(checksum mismatch\\)"):
        load_mask_file(str(path))


def test_reshaped_shapes_with_the_same_weight_count_are_caught_by_the_checksum(tmp_path, masks):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), masks)
    q, fc1 = SHAPES
    tamper(path, [[q, [24, 6]], [fc1, [7, 13]]])
    with pytest.raises(MaskFileError, match="m.safetensors: damaged mask file \\(checksum mismatch\\)"):
        load_mask_file(str(path))


def test_reordered_shapes_are_caught_by_the_checksum(tmp_path):
    path = tmp_path / "m.safetensors"
    square = {"encoder.layers.0.fc1.weight": (8, 8), "encoder.layers.0.fc2.weight": (8, 8)}
    save_mask_file(str(path), random_masks(square, 0.5, seed=3))
    tamper(path, [[name, list(shape)] for name, shape in reversed(square.items())])
    with pytest.raises(MaskFileError, match="checksum mismatch"):
        load_mask_file(str(path))


@pytest.mark.parametrize("shape", [[-12, -12], [0, 144], [12.0, 12], [True, 144], "12x12", [], [144, 1, -1]])
def test_shapes_that_are_not_positive_integers_are_refused_naming_the_mask(tmp_path, masks, shape):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), masks)
    q, fc1 = SHAPES
    tamper(path, [[q, shape], [fc1, [7, 13]]])
    message = rf"m.safetensors: damaged mask file \({q}: shape .* in 'shapes' is not a list of positive integers"
    with pytest.raises(MaskFileError, match=message):
        load_mask_file(str(path))


@pytest.mark.parametrize("shape", [[7, 14], [10 ** 30, 1]], ids=["one-more-column", "beyond-int64"])
def test_a_shape_that_does_not_match_the_packed_length_is_refused_naming_the_mask(tmp_path, masks, shape):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), masks)
    q, fc1 = SHAPES
    tamper(path, [[q, [12, 12]], [fc1, shape]])
    with pytest.raises(MaskFileError, match=rf"m.safetensors: damaged mask file \({fc1} holds 12 bytes for shape"):
        load_mask_file(str(path))


def test_version_1_files_still_load_and_their_checksum_is_still_verified(tmp_path, masks):
    path = tmp_path / "old.safetensors"
    write_version_1_file(path, masks)
    loaded = load_mask_file(str(path))
    assert loaded.metadata["format_version"] == "1" and loaded.shapes() == SHAPES
    assert all(torch.equal(loaded.masks[name], mask) for name, mask in masks.items())
    flip_a_stored_bit(path)
    with pytest.raises(MaskFileError, match="old.safetensors: damaged mask file \\(checksum mismatch\\)"):
        load_mask_file(str(path))


def test_a_version_from_the_future_is_refused(tmp_path, masks):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), masks)
    tamper(path, format_version="3")
    with pytest.raises(MaskFileError, match="m.safetensors: mask file format version '3'; this fairseq-subnets reads "
                                            "versions 1, 2"):
        load_mask_file(str(path))


def test_missing_file_and_foreign_safetensors_fail_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(MaskFileError, match="nothing.safetensors: no such mask file"):
        load_mask_file(str(tmp_path / "nothing.safetensors"))
    save_file({"x": torch.ones(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(MaskFileError, match="weights.safetensors: not a fairseq-subnets mask file"):
        load_mask_file(str(tmp_path / "weights.safetensors"))


def test_check_against_names_the_first_mismatch(tmp_path, masks):
    path = str(tmp_path / "m.safetensors")
    save_mask_file(path, masks)
    loaded = load_mask_file(path)
    loaded.check_against(SHAPES)
    q, fc1 = list(SHAPES)
    with pytest.raises(MaskFileError, match=rf"m.safetensors: mask for {q}, which the model does not have"):
        loaded.check_against({fc1: (7, 13)})
    with pytest.raises(MaskFileError, match=rf"{q} has shape \(12, 12\) in the mask file but \(12, 13\)"):
        loaded.check_against({q: (12, 13), fc1: (7, 13)})
    with pytest.raises(MaskFileError, match="m.safetensors: no mask for encoder.layers.1.fc1.weight"):
        loaded.check_against({**SHAPES, "encoder.layers.1.fc1.weight": (7, 13)})


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def disk_full(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_atomically(str(path), b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_checkpoint_fingerprint_depends_on_size_and_both_ends(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"a" * (3 << 20))
    first = checkpoint_fingerprint(str(path))
    assert first.startswith("sha256-size-first-last-MiB:") and first == checkpoint_fingerprint(str(path))
    path.write_bytes(b"a" * ((3 << 20) - 1) + b"b")
    assert checkpoint_fingerprint(str(path)) != first
