"""Mask files: exact round trip at any sparsity and structure, within 1.15 x the entropy H(s) bits
per weight and never above 1 bit, no pickle, atomic writes, a checksum over the streams, shapes and
encodings, versions 1 and 2 still read, and errors that name the file and the first mismatch."""
import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from factory import BASE, encoder_shapes
from fairseq_subnets.benchmarks.prune import binary_entropy, random_iid_masks
from fairseq_subnets.core.maskfile import (
    MaskFileError,
    checkpoint_fingerprint,
    load_mask_file,
    save_mask_file,
    write_atomically,
)
from fairseq_subnets.core.pruning import block_l2_masks, random_masks

SHAPES = {"encoder.layers.0.self_attn.q_proj.weight": (12, 12), "encoder.layers.0.fc1.weight": (7, 13)}
RUNS = "encoder.layers.0.fc2.weight"
"""A 1000-weight mask pruned to 10% (see `sparse_file`): stored as runs, with several bytes in each stream."""


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


def write_raw_file(path, masks, version):
    """A mask file as versions 1 and 2 wrote it: one packbits tensor per mask, named like the mask;
    the sha256 of version 2 over the format, the version and `shapes`, then the bits, that of
    version 1 over the bits only."""
    packed = {name: np.packbits(mask.numpy().reshape(-1), bitorder="little") for name, mask in masks.items()}
    shapes = json.dumps([[name, list(mask.shape)] for name, mask in masks.items()])
    digest = hashlib.sha256(json.dumps(["fairseq-subnets-masks", "2", shapes]).encode() if version == "2" else b"")
    for bits in packed.values():
        digest.update(bits.tobytes())
    save_file(packed, str(path), metadata={"format": "fairseq-subnets-masks", "format_version": version,
                                            "method": "random", "shapes": shapes, "sha256": digest.hexdigest()})


def version_3_checksum(header, tensors):
    """The sha256 of a version 3 file by the documented rule: the format, the version, the `shapes`
    and `encodings` texts, then every stream, mask by mask (`raw`, or `low` then `unary`)."""
    digest = hashlib.sha256(json.dumps(["fairseq-subnets-masks", "3", header["shapes"], header["encodings"]]).encode())
    for name, _ in json.loads(header["shapes"]):
        for stream in ("raw", "low", "unary"):
            if f"{name}::{stream}" in tensors:
                digest.update(tensors[f"{name}::{stream}"].tobytes())
    return digest.hexdigest()


def rewrite(path, edit, recompute_checksum=True):
    """Rewrites a version 3 file after `edit(tensors, shapes, encodings)` changed any of them in place;
    with the sha256 recomputed, as a writer that knows the layout would, only load's consistency
    checks can catch the edit."""
    with safe_open(str(path), framework="numpy") as reader:
        tensors = {name: reader.get_tensor(name) for name in reader.keys()}
        header = dict(reader.metadata())
    shapes, encodings = json.loads(header["shapes"]), json.loads(header["encodings"])
    edit(tensors, shapes, encodings)
    header.update(shapes=json.dumps(shapes), encodings=json.dumps(encodings))
    if recompute_checksum:
        header["sha256"] = version_3_checksum(header, tensors)
    save_file(tensors, str(path), metadata=header)


def stored_encodings(path):
    with safe_open(str(path), framework="numpy") as reader:
        return json.loads(reader.metadata()["encodings"])


def payload_bytes(path):
    """The bytes of the stored tensors: the file less its safetensors header (the JSON of names,
    shapes and metadata, a fixed cost per mask)."""
    data = path.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    return len(data) - 8 - header_length


@pytest.fixture
def sparse_file(tmp_path, masks):
    """m.safetensors: the two tiny masks (raw bits) and RUNS, a 1000-weight mask at 10% sparsity."""
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), {**masks, **random_iid_masks({RUNS: (40, 25)}, 0.1, seed=0)})
    assert [entry["payload"] for entry in stored_encodings(path)] == ["raw", "raw", "runs"]
    return path


def test_round_trip_keeps_masks_order_and_metadata(tmp_path, masks):
    path = str(tmp_path / "m.safetensors")
    save_mask_file(path, masks, {"method": "random", "sparsity": 0.4, "seed": 1})
    loaded = load_mask_file(path)
    assert list(loaded.masks) == list(masks)
    assert all(torch.equal(loaded.masks[n], m) and loaded.masks[n].dtype == torch.bool for n, m in masks.items())
    assert loaded.metadata["method"] == "random" and loaded.metadata["sparsity"] == "0.4"
    assert loaded.metadata["format"] == "fairseq-subnets-masks" and loaded.metadata["format_version"] == "3"
    assert loaded.shapes() == SHAPES
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


SPARSITIES = [0, 1e-6, 0.02, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 1]


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_round_trip_is_exact_at_any_sparsity(tmp_path, sparsity):
    path = tmp_path / "m.safetensors"
    masks = random_iid_masks({**SHAPES, "encoder.layers.0.fc2.weight": (512, 512)}, sparsity, seed=0)
    save_mask_file(str(path), masks)
    loaded = load_mask_file(str(path)).masks
    assert all(torch.equal(loaded[name], mask) for name, mask in masks.items())
    assert stored_encodings(path)[-1]["payload"] == ("raw" if sparsity == 0.5 else "runs")


def structured_masks():
    """Masks whose minority weights are not spread at random, as pruning by blocks or rows makes,
    and the edge cases of the runs payload."""
    def pruned(shape, where):
        mask = torch.ones(shape, dtype=torch.bool)
        mask.view(-1)[where] = False
        return mask

    weights = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    rows_pruned, columns_pruned = torch.ones(64, 48, dtype=torch.bool), torch.ones(64, 48, dtype=torch.bool)
    rows_pruned[::3] = False
    columns_pruned[:, ::5] = False
    checkerboard = torch.zeros(64, 48, dtype=torch.bool)
    checkerboard[:, ::2] = True
    return {
        "blocks-8x1-at-0.7": block_l2_masks({"w": weights}, 0.7, (8, 1))["w"],
        "blocks-8x1-at-0.1": block_l2_masks({"w": weights}, 0.1, (8, 1))["w"],
        "whole-rows": rows_pruned,
        "whole-columns": columns_pruned,
        "checkerboard": checkerboard,
        "first-30-percent-pruned": pruned((100, 10), slice(0, 300)),
        "first-weight-pruned": pruned((1000,), 0),
        "last-weight-pruned": pruned((1000, 1000), -1),
        "last-weight-kept": ~pruned((1000,), -1),
        "one-weight-kept": torch.ones(1, dtype=torch.bool),
        "one-weight-pruned": torch.zeros(1, dtype=torch.bool),
        "all-kept": torch.ones(7, 13, dtype=torch.bool),
        "all-pruned": torch.zeros(7, 13, dtype=torch.bool),
    }


@pytest.mark.parametrize("case", list(structured_masks()))
def test_structured_masks_round_trip_in_at_most_1_bit_per_weight(tmp_path, case):
    path = tmp_path / "m.safetensors"
    mask = structured_masks()[case]
    save_mask_file(str(path), {"w": mask})
    assert torch.equal(load_mask_file(str(path)).masks["w"], mask)
    assert payload_bytes(path) <= (mask.numel() + 7) // 8


@pytest.mark.parametrize("sparsity", [0.02, 0.05, 0.1, 0.2, 0.8, 0.9, 0.95])
def test_random_masks_take_at_most_1_15_times_the_entropy(tmp_path, sparsity):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), random_iid_masks({"w": (1000, 1000)}, sparsity, seed=0))
    assert 8 * payload_bytes(path) / 10 ** 6 <= 1.15 * binary_entropy(sparsity)


def test_half_pruned_random_masks_take_1_bit_per_weight(tmp_path):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), random_iid_masks({"w": (1000, 1000)}, 0.5, seed=0))
    assert 8 * payload_bytes(path) / 10 ** 6 <= 1.0 + 1e-6


def test_a_half_pruned_encoder_takes_at_most_1_02_bits_per_weight_with_the_metadata(tmp_path):
    """Alternate weights pruned: the worst case for the runs payload, so every mask is raw bits."""
    shapes = encoder_shapes(**BASE)
    path = tmp_path / "base.safetensors"
    masks = {name: torch.zeros(shape, dtype=torch.bool) for name, shape in shapes.items()}
    for mask in masks.values():
        mask[:, ::2] = True
    save_mask_file(str(path), masks, {"method": "global-l1", "sparsity": 0.5, "source_fingerprint": "x" * 80})
    weights = sum(a * b for a, b in shapes.values())
    assert 8 * os.path.getsize(path) / weights <= 1.02


def test_mask_names_holding_the_stream_separator_keep_their_tensors_apart(tmp_path):
    path = tmp_path / "m.safetensors"
    names = ["w", "w::low", "w::unary::raw"]
    masks = {name: mask for name, mask in zip(names, (random_iid_masks({"m": (30, 30)}, s, seed=0)["m"]
                                                      for s in (0.1, 0.5, 0.9)))}
    save_mask_file(str(path), masks)
    assert [entry["payload"] for entry in stored_encodings(path)] == ["runs", "raw", "runs"]
    loaded = load_mask_file(str(path)).masks
    assert all(torch.equal(loaded[name], mask) for name, mask in masks.items())


def test_loading_never_unpickles(tmp_path):
    path = tmp_path / "pickle.safetensors"
    torch.save({"masks": torch.ones(3)}, path)
    with pytest.raises(MaskFileError, match="pickle.safetensors: not a readable mask file"):
        load_mask_file(str(path))


@pytest.mark.parametrize("keep", [0, 7, 100, -40, -1])
def test_truncated_file_fails_naming_it(sparse_file, keep):
    data = sparse_file.read_bytes()
    sparse_file.write_bytes(data[:keep])
    with pytest.raises(MaskFileError, match="m.safetensors"):
        load_mask_file(str(sparse_file))


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


@pytest.mark.parametrize("version", ["1", "2"])
def test_older_versions_still_load_and_their_checksum_is_still_verified(tmp_path, masks, version):
    path = tmp_path / "old.safetensors"
    write_raw_file(path, masks, version)
    loaded = load_mask_file(str(path))
    assert loaded.metadata["format_version"] == version and loaded.shapes() == SHAPES
    assert all(torch.equal(loaded.masks[name], mask) for name, mask in masks.items())
    flip_a_stored_bit(path)
    with pytest.raises(MaskFileError, match="old.safetensors: damaged mask file \\(checksum mismatch\\)"):
        load_mask_file(str(path))


def flip_bit(stream):
    def edit(tensors, shapes, encodings):
        tensors[f"{RUNS}::{stream}"][1] ^= 0x04
    return edit


def edit_runs_entry(**fields):
    def edit(tensors, shapes, encodings):
        encodings[-1].update(fields)
    return edit


@pytest.mark.parametrize("edit", [flip_bit("low"), flip_bit("unary"), edit_runs_entry(minority=True)],
                         ids=["low-stream-bit", "unary-stream-bit", "minority-value"])
def test_an_edited_runs_payload_is_caught_by_the_checksum(sparse_file, edit):
    rewrite(sparse_file, edit, recompute_checksum=False)
    with pytest.raises(MaskFileError, match="m.safetensors: damaged mask file \\(checksum mismatch\\)"):
        load_mask_file(str(sparse_file))


def cut_unary_stream(tensors, shapes, encodings):
    tensors[f"{RUNS}::unary"] = tensors[f"{RUNS}::unary"][:-1]


def unterminated_last_code(tensors, shapes, encodings):
    last = encodings[-1]["unary_bits"] - 1
    tensors[f"{RUNS}::unary"][last // 8] |= 1 << (last % 8)


def only_terminators(tensors, shapes, encodings):
    tensors[f"{RUNS}::unary"][:] = 0


def largest_remainders(tensors, shapes, encodings):
    tensors[f"{RUNS}::low"][:] = 0xFF


def drop_unary_stream(tensors, shapes, encodings):
    del tensors[f"{RUNS}::unary"]


def name_a_raw_stream_as_in_version_2(tensors, shapes, encodings):
    name = shapes[0][0]
    tensors[name] = tensors.pop(f"{name}::raw")


def shape_of_150_weights(tensors, shapes, encodings):
    shapes[-1][1] = [150]


def one_encoding_short(tensors, shapes, encodings):
    encodings.pop()


RUNS_STREAMS = rf"{RUNS} holds runs of \d+ \+ \d+ bytes, where 'encodings' implies \d+ \+ \d+"
NEITHER = rf"{RUNS}: .* in 'encodings' is neither a raw nor a runs payload"
INCONSISTENT = {
    "more-gaps": (edit_runs_entry(gaps=108), RUNS_STREAMS),
    "counts-beyond-the-streams": (edit_runs_entry(gaps=10 ** 15, unary_bits=10 ** 15), RUNS_STREAMS),
    "stream-cut": (cut_unary_stream, RUNS_STREAMS),
    "unterminated-code": (unterminated_last_code, rf"{RUNS}: the unary stream does not hold \d+ whole codes"),
    "extra-codes": (only_terminators, rf"{RUNS}: the unary stream does not hold \d+ whole codes"),
    "positions-past-the-end": (largest_remainders, rf"{RUNS}: the minority weights run past the 1000 weights"),
    "minority-of-most-weights": (shape_of_150_weights, rf"{RUNS}: 'encodings' gives \d+ minority weights in "
                                                       rf"\d+ unary bits, impossible for shape \(150,\)"),
    "encodings-short": (one_encoding_short, "'encodings' does not describe the 3 masks of 'shapes'"),
    "unknown-payload": (edit_runs_entry(payload="zip"), NEITHER),
    "boolean-k": (edit_runs_entry(rice_k=True), NEITHER),
    "k-beyond-int64": (edit_runs_entry(rice_k=63), NEITHER),
    "negative-gaps": (edit_runs_entry(gaps=-1), NEITHER),
    "extra-field": (edit_runs_entry(note="x"), NEITHER),
    "stream-missing": (drop_unary_stream, "tensor names disagree with 'shapes'"),
    "raw-named-as-in-version-2": (name_a_raw_stream_as_in_version_2, "tensor names disagree with 'shapes'"),
}


@pytest.mark.parametrize("case", list(INCONSISTENT))
def test_an_inconsistent_file_with_a_valid_checksum_is_refused_naming_the_mask(sparse_file, case):
    edit, message = INCONSISTENT[case]
    rewrite(sparse_file, edit)
    with pytest.raises(MaskFileError, match=rf"m.safetensors: damaged mask file \({message}"):
        load_mask_file(str(sparse_file))


def test_unreadable_encodings_are_refused(sparse_file):
    tamper(sparse_file, encodings="[{")
    with pytest.raises(MaskFileError, match=r"m.safetensors: damaged mask file \(unreadable 'encodings' metadata\)"):
        load_mask_file(str(sparse_file))


def test_a_version_from_the_future_is_refused(tmp_path, masks):
    path = tmp_path / "m.safetensors"
    save_mask_file(str(path), masks)
    tamper(path, format_version="4")
    with pytest.raises(MaskFileError, match="m.safetensors: mask file format version '4'; this fairseq-subnets reads "
                                            "versions 1, 2, 3"):
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
