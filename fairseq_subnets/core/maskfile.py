"""Mask files: a safetensors file of bit-packed masks plus metadata; never pickled.

Layout (format version 1):
  * one uint8 tensor per mask, named like the mask (`encoder.layers.3.fc1.weight`), holding
    `np.packbits(mask.flatten(), bitorder="little")`: 1 bit per weight plus < 1 byte per matrix;
  * safetensors metadata (strings): `format` = "fairseq-subnets-masks", `format_version` = "1",
    `shapes` (JSON list of [name, shape] in mask-set order), `sha256` (of the packed bytes in that
    order, so a flipped bit is caught on load), and whatever the writer describes, by convention
    `method`, `sparsity`, `scope`, `block`, `targets`, `layers`, `seed`, `source`,
    `source_fingerprint` (see checkpoint_fingerprint).
Files are written to a temporary name in the target directory and renamed into place, so a reader
never sees half a file.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from ..atomic import write_atomically
from .targets import MaskSet

FORMAT = "fairseq-subnets-masks"
FORMAT_VERSION = "1"
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


def _digest(packed: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
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
    header.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        shapes=json.dumps([[name, list(masks[name].shape)] for name in names]),
        sha256=_digest(packed),
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


def _read_shapes(path: str, metadata: Mapping[str, str]):
    if metadata.get("format") != FORMAT:
        raise MaskFileError(f"{path}: not a fairseq-subnets mask file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise MaskFileError(
            f"{path}: mask file format version {metadata.get('format_version')!r}; "
            f"this fairseq-subnets reads version {FORMAT_VERSION}"
        )
    try:
        return [(name, tuple(int(size) for size in shape)) for name, shape in json.loads(metadata["shapes"])]
    except (KeyError, TypeError, ValueError):
        raise MaskFileError(f"{path}: damaged mask file (unreadable 'shapes' metadata)") from None


def load_mask_file(path: str) -> MaskFile:
    """Reads and verifies a mask file (format, names, sizes, checksum); every problem raises
    MaskFileError naming the file."""
    if not os.path.isfile(path):
        raise MaskFileError(f"{path}: no such mask file")
    try:
        with safe_open(path, framework="numpy") as reader:
            metadata = dict(reader.metadata() or {})
            shapes = _read_shapes(path, metadata)
            stored = set(reader.keys())
            if stored != {name for name, _ in shapes}:
                raise MaskFileError(f"{path}: damaged mask file (tensor names disagree with 'shapes')")
            packed = [reader.get_tensor(name) for name, _ in shapes]
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        if isinstance(error, MaskFileError):
            raise
        raise MaskFileError(f"{path}: not a readable mask file, truncated or damaged ({error})") from None
    masks = {}
    for (name, shape), bits in zip(shapes, packed):
        count = int(np.prod(shape, dtype=np.int64))
        if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (count + 7) // 8:
            raise MaskFileError(f"{path}: damaged mask file ({name} holds {bits.size} bytes for shape {shape})")
        unpacked = np.unpackbits(bits, count=count, bitorder="little").view(np.bool_)
        masks[name] = torch.from_numpy(unpacked.reshape(shape))
    if _digest(packed) != metadata.get("sha256"):
        raise MaskFileError(f"{path}: damaged mask file (checksum mismatch)")
    return MaskFile(path=path, masks=masks, metadata=metadata)
