"""Mask files: a safetensors file of bit-packed masks plus metadata; never pickled.

Layout (format version 2, the one written):
  * one uint8 tensor per mask, named like the mask (`encoder.layers.3.fc1.weight`), holding
    `np.packbits(mask.flatten(), bitorder="little")`: 1 bit per weight plus < 1 byte per matrix;
  * safetensors metadata (strings): `format` = "fairseq-subnets-masks", `format_version` = "2",
    `shapes` (JSON list of [name, shape] in mask-set order), `sha256` (of the format, the version
    and the `shapes` text, then the packed bytes in that order, so a flipped bit and an edited
    name, order or shape are both caught on load), and whatever the writer describes, by
    convention `method`, `sparsity`, `scope`, `block`, `targets`, `layers`, `seed`, `source`,
    `source_fingerprint` (see checkpoint_fingerprint).
Version 1 files (the same layout, their `sha256` covering the packed bytes only) are still read.
Files are written to a temporary name in the target directory and renamed into place, so a reader
never sees half a file.
"""
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from ..atomic import write_atomically
from .targets import MaskSet

FORMAT = "fairseq-subnets-masks"
_FINGERPRINT_SPAN = 1 << 20


class MaskFileError(ValueError):
    """A mask file is missing, damaged, of another format, or does not fit the model."""


def checkpoint_fingerprint(path: str) -> str:
    """sha256 of a checkpoint's size and its first and last MiB: identifies the exact file in well
    under a second even for multi-GB checkpoints (two files sharing size and both ends would
    collide, which torch.save output practically never does)."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_SPAN))
        handle.seek(max(0, size - _FINGERPRINT_SPAN))
        digest.update(handle.read(_FINGERPRINT_SPAN))
    return "sha256-size-first-last-MiB:" + digest.hexdigest()


def _packed(mask: torch.Tensor) -> np.ndarray:
    return np.packbits(mask.detach().cpu().to(torch.bool).numpy().reshape(-1), bitorder="little")


def _checksum_header_v1(shapes_text: str) -> bytes:
    """Version 1 checksummed the packed bytes alone, so an edited `shapes` went unnoticed."""
    return b""


def _checksum_header_v2(shapes_text: str) -> bytes:
    """Version 2 checksums, before the bits, everything that decides what they mean: the format,
    the version (which fixes the bit order) and the `shapes` text as stored (names, order, shapes)."""
    return json.dumps([FORMAT, "2", shapes_text]).encode()


CHECKSUM_HEADERS = {"1": _checksum_header_v1, "2": _checksum_header_v2}
"""Every format version this module reads, with what its checksum covers besides the packed bits."""
FORMAT_VERSION = "2"
"""The version written."""


def _checksum(version: str, shapes_text: str, packed: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256(CHECKSUM_HEADERS[version](shapes_text))
    for array in packed:
        digest.update(memoryview(array))
    return digest.hexdigest()


def mask_set_digest(masks: Mapping[str, torch.Tensor]) -> str:
    """sha256 of names, shapes and bits of a mask set: equal digests mean identical masks, so
    distributed ranks can compare their masks by exchanging 32 bytes."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(f"{name}:{tuple(masks[name].shape)};".encode())
        digest.update(memoryview(_packed(masks[name])))
    return digest.hexdigest()


def save_mask_file(path: str, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, object] = None) -> None:
    """Writes `masks` bit-packed with `metadata` (values stored as strings) to `path`, atomically."""
    names = list(masks)
    packed = [_packed(masks[name]) for name in names]
    header = {key: str(value) for key, value in (metadata or {}).items()}
    shapes_text = json.dumps([[name, list(masks[name].shape)] for name in names])
    header.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        shapes=shapes_text,
        sha256=_checksum(FORMAT_VERSION, shapes_text, packed),
    )
    write_atomically(path, safetensors_bytes(dict(zip(names, packed)), metadata=header))


@dataclass
class MaskFile:
    """A loaded mask file: the masks (bool tensors, in stored order) and its metadata strings."""

    path: str
    masks: MaskSet
    metadata: Dict[str, str] = field(default_factory=dict)

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {name: tuple(mask.shape) for name, mask in self.masks.items()}

    def check_against(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Fails naming the first mismatch between this file and the model's weight shapes: mask
        names in file order first (unknown to the model, or shaped differently), then model
        weights the file has no mask for."""
        for name, mask in self.masks.items():
            if name not in shapes:
                raise MaskFileError(f"{self.path}: mask for {name}, which the model does not have")
            if tuple(shapes[name]) != tuple(mask.shape):
                raise MaskFileError(
                    f"{self.path}: {name} has shape {tuple(mask.shape)} in the mask file "
                    f"but {tuple(shapes[name])} in the model"
                )
        for name in shapes:
            if name not in self.masks:
                raise MaskFileError(f"{self.path}: no mask for {name}")


def is_mask_file(path) -> bool:
    """Whether `path` is a safetensors file whose metadata names this format (any version), so that
    readers of other files can say a mask file was given in the wrong place."""
    try:
        with safe_open(str(path), framework="numpy") as reader:
            return (reader.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError):
        return False


def _read_version(path: str, metadata: Mapping[str, str]) -> str:
    if metadata.get("format") != FORMAT:
        raise MaskFileError(f"{path}: not a fairseq-subnets mask file (format {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if version not in CHECKSUM_HEADERS:
        raise MaskFileError(
            f"{path}: mask file format version {version!r}; "
            f"this fairseq-subnets reads versions {', '.join(CHECKSUM_HEADERS)}"
        )
    return version


def _read_shapes(path: str, shapes_text) -> List[Tuple[str, Tuple[int, ...]]]:
    """The (name, shape) entries of the `shapes` metadata: distinct names, each shape a non-empty
    list of positive integers (anything else would make the bits unreadable or mean nothing)."""
    try:
        entries = [(name, shape) for name, shape in json.loads(shapes_text)]
    except (TypeError, ValueError):
        raise MaskFileError(f"{path}: damaged mask file (unreadable 'shapes' metadata)") from None
    names = set()
    for name, shape in entries:
        if not isinstance(name, str):
            raise MaskFileError(f"{path}: damaged mask file (mask name {name!r} in 'shapes' is not a string)")
        if name in names:
            raise MaskFileError(f"{path}: damaged mask file ({name} is listed twice in 'shapes')")
        names.add(name)
        if not isinstance(shape, list) or not shape or not all(type(size) is int and size > 0 for size in shape):
            raise MaskFileError(
                f"{path}: damaged mask file ({name}: shape {shape!r} in 'shapes' is not a list of positive integers)"
            )
    return [(name, tuple(shape)) for name, shape in entries]


def _unpacked(path: str, name: str, shape: Tuple[int, ...], bits: np.ndarray) -> torch.Tensor:
    count = math.prod(shape)  # exact for any size, where numpy's int64 product would overflow
    if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (count + 7) // 8:
        raise MaskFileError(f"{path}: damaged mask file ({name} holds {bits.size} bytes for shape {shape})")
    return torch.from_numpy(np.unpackbits(bits, count=count, bitorder="little").view(np.bool_).reshape(shape))


def load_mask_file(path: str) -> MaskFile:
    """Reads and verifies a mask file (format, names, sizes, checksum); every problem raises
    MaskFileError naming the file."""
    if not os.path.isfile(path):
        raise MaskFileError(f"{path}: no such mask file")
    try:
        with safe_open(path, framework="numpy") as reader:
            metadata = dict(reader.metadata() or {})
            version = _read_version(path, metadata)
            shapes = _read_shapes(path, metadata.get("shapes"))
            stored = set(reader.keys())
            if stored != {name for name, _ in shapes}:
                raise MaskFileError(f"{path}: damaged mask file (tensor names disagree with 'shapes')")
            packed = [reader.get_tensor(name) for name, _ in shapes]
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        if isinstance(error, MaskFileError):
            raise
        raise MaskFileError(f"{path}: not a readable mask file, truncated or damaged ({error})") from None
    masks = {name: _unpacked(path, name, shape, bits) for (name, shape), bits in zip(shapes, packed)}
    if _checksum(version, metadata["shapes"], packed) != metadata.get("sha256"):
        raise MaskFileError(f"{path}: damaged mask file (checksum mismatch)")
    return MaskFile(path=path, masks=masks, metadata=metadata)
