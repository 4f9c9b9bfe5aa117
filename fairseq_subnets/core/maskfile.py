"""Mask files: a safetensors file of compressed masks plus metadata; never pickled.

Layout (format version 3, the one written). A mask (True = kept weight), flattened in C order, is
stored as whichever of two payloads takes fewer bytes, in uint8 tensors named `NAME::STREAM` after
the mask (`encoder.layers.3.fc1.weight::raw`). The stream is what follows the last `::`, so the
tensors of two masks never share a name, whatever the mask names hold.
  * `raw`: `NAME::raw` = `np.packbits(mask, bitorder="little")`, 1 bit per weight plus < 1 byte:
    what a mask near 50% sparsity needs anyway.
  * `runs`: the positions p_0 < p_1 < ... of the mask's minority value (whichever of True and False
    is rarer; every other weight holds the other one), as Golomb-Rice codes of the gaps
    p_i - p_(i-1), with p_(-1) = -1: gap - 1 = (q << k) + r with r < 2**k. `NAME::low` holds the
    remainders r bit plane by bit plane (bit 0 of every r, then bit 1, ...), `NAME::unary` per gap
    q ones then a zero, each packed with `np.packbits(..., bitorder="little")`. Two streams of fixed
    meaning let both directions run as whole-array numpy operations (the zeros of the unary stream
    end the codes), and with k near log2 of the mean gap a random mask at sparsity s takes within a
    few percent of the entropy H(s) bits per weight (0.47 at s = 0.1 or 0.9) where raw bits take 1.
Safetensors metadata (strings): `format` = "fairseq-subnets-masks", `format_version` = "3", `shapes`
(JSON list of [name, shape] in mask-set order), `encodings` (JSON list, one object per mask in the
same order: {"payload": "raw"} or {"payload": "runs", "minority": true|false, "rice_k": k, "gaps":
how many weights hold the minority value, "unary_bits": length of the unary stream before its
padding}), `sha256` (of the format, the version, the `shapes` and `encodings` texts, then every
stream, mask by mask in that order, `low` before `unary`, so a flipped bit and an edited name,
order, shape or encoding are all caught on load), and whatever the writer describes, by convention
`method`, `sparsity`, `scope`, `block`, `targets`, `layers`, `seed`, `source`, `source_fingerprint`
(see checkpoint_fingerprint).

Versions 1 and 2 are still read: a `raw` tensor per mask, named like the mask itself, and no
`encodings`; the `sha256` of version 2 covers the format, the version and `shapes`, then the bits,
that of version 1 the bits alone. Files are written to a temporary name in the target directory
and renamed into place, so a reader never sees half a file.
"""
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, ClassVar, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load as safetensors_numpy_load
from safetensors.numpy import save as safetensors_bytes

from ..atomic import write_atomically
from .targets import MaskSet

FORMAT = "fairseq-subnets-masks"
_FINGERPRINT_SPAN = 1 << 20
_LARGEST_RICE_K = 62
"""Keeps `1 << k` inside int64; a mask needs k of about log2(weights) at most."""

Shape = Tuple[int, ...]


class MaskFileError(ValueError):
    """A mask file is missing, damaged, of another format, or does not fit the model."""


def _damaged(path: str, detail: str) -> MaskFileError:
    return MaskFileError(f"{path}: damaged mask file ({detail})")


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


def _flat_bits(mask: torch.Tensor) -> np.ndarray:
    return mask.detach().cpu().to(torch.bool).numpy().reshape(-1)


def _packed(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits, bitorder="little")


def _is_byte_vector(array: np.ndarray) -> bool:
    return array.dtype == np.uint8 and array.ndim == 1


@dataclass(frozen=True)
class RawBits:
    """A mask stored as its packed bits, 1 per weight: the smaller payload near 50% sparsity."""

    streams: ClassVar[Tuple[str, ...]] = ("raw",)

    def describe(self) -> Dict[str, object]:
        return {"payload": "raw"}

    def check_sizes(self, path: str, name: str, shape: Shape, streams: Sequence[np.ndarray]) -> None:
        (bits,) = streams
        if not _is_byte_vector(bits) or bits.size != (math.prod(shape) + 7) // 8:
            raise _damaged(path, f"{name} holds {bits.size} bytes for shape {shape}")

    def decoded(self, path: str, name: str, shape: Shape, streams: Sequence[np.ndarray]) -> np.ndarray:
        return np.unpackbits(streams[0], count=math.prod(shape), bitorder="little").view(np.bool_)


RAW_BITS = RawBits()


@dataclass(frozen=True)
class MinorityRuns:
    """A mask stored as Golomb-Rice codes of the gaps between the weights of its rarer value (see
    the module docstring): within a few percent of the entropy for random masks of any sparsity."""

    minority: bool
    rice_k: int
    gaps: int
    unary_bits: int
    streams: ClassVar[Tuple[str, ...]] = ("low", "unary")

    def describe(self) -> Dict[str, object]:
        return {"payload": "runs", **asdict(self)}

    def stream_bytes(self) -> Tuple[int, int]:
        return (self.gaps * self.rice_k + 7) // 8, (self.unary_bits + 7) // 8

    def span_before_remainders(self) -> int:
        """What the gaps add up to without their remainders (the last position + 1 when those are
        0), exactly, from the counts alone: it may not exceed the mask's weights."""
        return self.gaps + ((self.unary_bits - self.gaps) << self.rice_k)

    def encoded(self, offsets: np.ndarray) -> List[np.ndarray]:
        """The `low` and `unary` streams of the gaps minus 1 (`offsets`)."""
        planes = (offsets >> np.arange(self.rice_k)[:, None]) & 1
        unary = np.ones(self.unary_bits, dtype=np.bool_)
        unary[np.cumsum((offsets >> self.rice_k) + 1) - 1] = False
        return [_packed(planes.astype(np.bool_).reshape(-1)), _packed(unary)]

    def check_sizes(self, path: str, name: str, shape: Shape, streams: Sequence[np.ndarray]) -> None:
        """Checks the stored counts against the stream lengths and the shape, before anything is
        allocated from them: every later allocation is then bounded by what the file holds."""
        count = math.prod(shape)
        low, unary = streams
        expected = self.stream_bytes()
        if not (_is_byte_vector(low) and _is_byte_vector(unary)) or (low.size, unary.size) != expected:
            raise _damaged(path, f"{name} holds runs of {low.size} + {unary.size} bytes, "
                                 f"where 'encodings' implies {expected[0]} + {expected[1]}")
        if (count >= 1 << 63 or 2 * self.gaps > count or (self.gaps == 0) != (self.unary_bits == 0)
                or self.unary_bits < self.gaps or self.span_before_remainders() > count):
            raise _damaged(path, f"{name}: 'encodings' gives {self.gaps} minority weights in {self.unary_bits} "
                                 f"unary bits, impossible for shape {shape}")

    def decoded(self, path: str, name: str, shape: Shape, streams: Sequence[np.ndarray]) -> np.ndarray:
        """The mask's flat bits; checks what a valid checksum does not vouch for (any writer can
        compute one): that the unary stream holds exactly `gaps` codes and that the positions stay
        inside the mask, the latter exactly and before any int64 arithmetic, so none can overflow."""
        count = math.prod(shape)
        low, unary = streams
        planes = np.unpackbits(low, count=self.gaps * self.rice_k, bitorder="little")
        planes = planes.reshape(self.rice_k, self.gaps).view(np.bool_)
        code_ends = np.flatnonzero(np.unpackbits(unary, count=self.unary_bits, bitorder="little") == 0)
        if code_ends.size != self.gaps or (self.gaps and code_ends[-1] != self.unary_bits - 1):
            raise _damaged(path, f"{name}: the unary stream does not hold {self.gaps} whole codes")
        remainders, remainder_sum = _remainders(planes)
        if self.span_before_remainders() + remainder_sum > count:
            raise _damaged(path, f"{name}: the minority weights run past the {count} weights of shape {shape}")
        positions = _gaps_minus_one(code_ends)  # the quotients, then in place the gaps, then the positions
        positions <<= self.rice_k
        positions += remainders
        positions += 1
        np.cumsum(positions, out=positions)
        positions -= 1
        bits = np.full(count, not self.minority)
        bits[positions] = self.minority
        return bits


def _gaps_minus_one(positions: np.ndarray) -> np.ndarray:
    """p_i - p_(i-1) - 1 for ascending int64 positions p, with p_(-1) = -1: the Rice-coded numbers
    on writing, the quotients from the ends of the unary codes on reading. Written out because
    np.diff with `prepend` copies the positions twice more."""
    gaps = np.empty_like(positions)
    gaps[:1] = positions[:1]
    np.subtract(positions[1:], positions[:-1], out=gaps[1:])
    gaps[1:] -= 1
    return gaps


def _remainders(planes: np.ndarray) -> Tuple[np.ndarray, int]:
    """The numbers whose bit j is row j of `planes` (k <= 62 rows of bools), as int64, and their
    exact sum, which bounds the positions before int64 arithmetic on them could overflow. One pass
    per plane: faster than the whole-array expressions tried, and 8 bytes per number whatever k."""
    numbers = np.zeros(planes.shape[1], dtype=np.int64)
    total = 0
    for bit, plane in enumerate(planes):
        numbers |= plane.astype(np.int64) << bit
        total += np.count_nonzero(plane) << bit
    return numbers, total


Payload = Union[RawBits, MinorityRuns]


def _cheapest_runs(minority: bool, offsets: np.ndarray) -> MinorityRuns:
    """The runs payload of these gaps minus 1 (`offsets`) whose streams take fewest bytes, among k
    next to log2(mean gap * ln 2), the optimum for the geometric gaps of a random mask, and its
    neighbours (each priced exactly, in one pass), since pruned masks are not quite random."""
    guess = round(math.log2((float(offsets.mean()) + 1) * math.log(2))) if offsets.size else 0
    candidates = (MinorityRuns(minority, rice_k, offsets.size, offsets.size + int((offsets >> rice_k).sum()))
                  for rice_k in range(max(0, guess - 1), min(max(0, guess + 1), _LARGEST_RICE_K) + 1))
    return min(candidates, key=lambda runs: sum(runs.stream_bytes()))


def _encoded(mask: torch.Tensor) -> Tuple[Payload, List[np.ndarray]]:
    """The payload of `mask` that takes fewer bytes, and its streams; raw bits on a tie, so that
    no mask takes more room than in version 2."""
    bits = _flat_bits(mask)
    kept = int(np.count_nonzero(bits))
    minority = kept < bits.size - kept
    offsets = _gaps_minus_one(np.flatnonzero(bits if minority else ~bits))
    runs = _cheapest_runs(minority, offsets)
    if sum(runs.stream_bytes()) >= (bits.size + 7) // 8:
        return RAW_BITS, [_packed(bits)]
    return runs, runs.encoded(offsets)


def encode_mask(mask: torch.Tensor) -> Tuple[Dict[str, object], List[np.ndarray]]:
    """A mask's smaller payload as its description (an `encodings` entry) and its uint8 streams:
    the coding of mask files, for other files that hold masks (the compact checkpoint)."""
    payload, streams = _encoded(mask)
    return payload.describe(), streams


def decode_mask(label: str, name: str, shape: Shape, description, streams: Sequence[np.ndarray]) -> np.ndarray:
    """The flat bits of the mask `encode_mask` described and streamed, every field and size checked
    as a mask file's are (a MaskFileError naming `label` and `name` otherwise)."""
    payload = _parsed_payload(label, name, description)
    if len(streams) != len(payload.streams):
        raise _damaged(label, f"{name} holds {len(streams)} mask streams, its payload {len(payload.streams)}")
    payload.check_sizes(label, name, shape, streams)
    return payload.decoded(label, name, shape, streams)


def _checksum_header_v1(metadata: Mapping[str, str]) -> bytes:
    """Version 1 checksummed the packed bytes alone, so an edited `shapes` went unnoticed."""
    return b""


def _checksum_header_v2(metadata: Mapping[str, str]) -> bytes:
    """Version 2 checksums, before the bits, everything that decides what they mean: the format,
    the version (which fixes the bit order) and the `shapes` text as stored (names, order, shapes)."""
    return json.dumps([FORMAT, "2", metadata["shapes"]]).encode()


def _checksum_header_v3(metadata: Mapping[str, str]) -> bytes:
    """Version 3 adds the `encodings` text, which decides how the streams decode."""
    return json.dumps([FORMAT, "3", metadata["shapes"], metadata["encodings"]]).encode()


def _named_like_the_mask(name: str, stream: str) -> str:
    return name


def _named_mask_and_stream(name: str, stream: str) -> str:
    return f"{name}::{stream}"


def _all_raw(path: str, metadata: Mapping[str, str], shapes: Sequence[Tuple[str, Shape]]) -> List[Payload]:
    return [RAW_BITS] * len(shapes)


def _read_encodings(path: str, metadata: Mapping[str, str], shapes: Sequence[Tuple[str, Shape]]) -> List[Payload]:
    """The payload of each mask from the `encodings` metadata, its fields checked for type and
    range (their consistency with the streams is checked once those are read)."""
    try:
        entries = json.loads(metadata.get("encodings"))
    except (TypeError, ValueError):
        raise _damaged(path, "unreadable 'encodings' metadata") from None
    if not isinstance(entries, list) or len(entries) != len(shapes):
        raise _damaged(path, f"'encodings' does not describe the {len(shapes)} masks of 'shapes'")
    return [_parsed_payload(path, name, entry) for (name, _), entry in zip(shapes, entries)]


_RUNS_FIELDS = {"payload"} | {runs_field.name for runs_field in fields(MinorityRuns)}


def _parsed_payload(path: str, name: str, entry) -> Payload:
    if entry == RAW_BITS.describe():
        return RAW_BITS
    if (isinstance(entry, dict) and set(entry) == _RUNS_FIELDS and entry["payload"] == "runs"
            and type(entry["minority"]) is bool
            and all(type(entry[key]) is int and entry[key] >= 0 for key in ("rice_k", "gaps", "unary_bits"))
            and entry["rice_k"] <= _LARGEST_RICE_K):
        return MinorityRuns(entry["minority"], entry["rice_k"], entry["gaps"], entry["unary_bits"])
    raise _damaged(path, f"{name}: {entry!r} in 'encodings' is neither a raw nor a runs payload")


@dataclass(frozen=True)
class _Layout:
    """What a format version decides: what its checksum covers besides the streams, how the tensors
    of a mask's streams are named, and how to learn each mask's payload."""

    checksum_header: Callable[[Mapping[str, str]], bytes]
    tensor_name: Callable[[str, str], str]
    payloads: Callable[[str, Mapping[str, str], Sequence[Tuple[str, Shape]]], List[Payload]]


FORMAT_VERSIONS = {
    "1": _Layout(_checksum_header_v1, _named_like_the_mask, _all_raw),
    "2": _Layout(_checksum_header_v2, _named_like_the_mask, _all_raw),
    "3": _Layout(_checksum_header_v3, _named_mask_and_stream, _read_encodings),
}
"""Every format version this module reads."""
FORMAT_VERSION = "3"
"""The version written."""


def file_checksum(version: str, metadata: Mapping[str, str], streams: Sequence[np.ndarray]) -> str:
    """The `sha256` a file of format `version` stores: its checksum header from `metadata`, then the
    streams (in stored order: mask by mask, each mask's streams in payload order)."""
    digest = hashlib.sha256(FORMAT_VERSIONS[version].checksum_header(metadata))
    for array in streams:
        digest.update(memoryview(array))
    return digest.hexdigest()


def mask_file_bytes(masks: Mapping[str, torch.Tensor], metadata: Mapping[str, object] = None) -> bytes:
    """The bytes of a mask file holding `masks`, each in its smaller payload, with `metadata`
    (values stored as strings): what `save_mask_file` writes, and what a bundle embeds."""
    names = list(masks)
    encoded = [_encoded(masks[name]) for name in names]
    header = {key: str(value) for key, value in (metadata or {}).items()}
    header.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        shapes=json.dumps([[name, list(masks[name].shape)] for name in names]),
        encodings=json.dumps([payload.describe() for payload, _ in encoded]),
    )
    header["sha256"] = file_checksum(FORMAT_VERSION, header, [array for _, streams in encoded for array in streams])
    tensor_name = FORMAT_VERSIONS[FORMAT_VERSION].tensor_name
    tensors = {tensor_name(name, stream): array
               for name, (payload, streams) in zip(names, encoded) for stream, array in zip(payload.streams, streams)}
    return safetensors_bytes(tensors, metadata=header)


def save_mask_file(path: str, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, object] = None) -> None:
    """Writes the mask file of `masks` and `metadata` to `path`, atomically."""
    write_atomically(path, mask_file_bytes(masks, metadata))


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
    if version not in FORMAT_VERSIONS:
        raise MaskFileError(
            f"{path}: mask file format version {version!r}; "
            f"this fairseq-subnets reads versions {', '.join(FORMAT_VERSIONS)}"
        )
    return version


def _read_shapes(path: str, shapes_text) -> List[Tuple[str, Shape]]:
    """The (name, shape) entries of the `shapes` metadata: distinct names, each shape a non-empty
    list of positive integers (anything else would make the bits unreadable or mean nothing)."""
    try:
        entries = [(name, shape) for name, shape in json.loads(shapes_text)]
    except (TypeError, ValueError):
        raise _damaged(path, "unreadable 'shapes' metadata") from None
    names = set()
    for name, shape in entries:
        if not isinstance(name, str):
            raise _damaged(path, f"mask name {name!r} in 'shapes' is not a string")
        if name in names:
            raise _damaged(path, f"{name} is listed twice in 'shapes'")
        names.add(name)
        if not isinstance(shape, list) or not shape or not all(type(size) is int and size > 0 for size in shape):
            raise _damaged(path, f"{name}: shape {shape!r} in 'shapes' is not a list of positive integers")
    return [(name, tuple(shape)) for name, shape in entries]


class _BytesReader:
    """The part of safetensors' file reader that `_read` uses, over the bytes of a file in memory
    (a mask embedded in a bundle). The header is a little-endian u64 length, then JSON."""

    def __init__(self, data: bytes):
        length = int.from_bytes(data[:8], "little")
        self._metadata = json.loads(data[8:8 + length]).get("__metadata__") or {}
        self._tensors = safetensors_numpy_load(data)

    def metadata(self):
        return self._metadata

    def keys(self):
        return self._tensors.keys()

    def get_tensor(self, name):
        return self._tensors[name]


def load_mask_file(path: str) -> MaskFile:
    """Reads and verifies a mask file (format, names, payloads, sizes, checksum, then what each
    payload decodes to); every problem raises MaskFileError naming the file."""
    if not os.path.isfile(path):
        raise MaskFileError(f"{path}: no such mask file")
    try:
        with safe_open(path, framework="numpy") as reader:
            return _read(path, reader)
    except (SafetensorError, OSError) as error:
        raise MaskFileError(f"{path}: not a readable mask file, truncated or damaged ({error})") from None


def read_mask_bytes(data: bytes, label: str) -> MaskFile:
    """`load_mask_file` for a mask file's bytes held in memory; errors name `label`."""
    try:
        return _read(label, _BytesReader(bytes(data)))
    except (SafetensorError, ValueError, TypeError) as error:
        if isinstance(error, MaskFileError):
            raise
        raise MaskFileError(f"{label}: not a readable mask file, truncated or damaged ({error})") from None


def _read(path: str, reader) -> MaskFile:
    try:
        metadata = dict(reader.metadata() or {})
        version = _read_version(path, metadata)
        layout = FORMAT_VERSIONS[version]
        shapes = _read_shapes(path, metadata.get("shapes"))
        payloads = layout.payloads(path, metadata, shapes)
        tensor_names = [[layout.tensor_name(name, stream) for stream in payload.streams]
                        for (name, _), payload in zip(shapes, payloads)]
        if set(reader.keys()) != {tensor for names in tensor_names for tensor in names}:
            raise _damaged(path, "tensor names disagree with 'shapes'")
        streams = [[reader.get_tensor(tensor) for tensor in names] for names in tensor_names]
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        if isinstance(error, MaskFileError):
            raise
        raise MaskFileError(f"{path}: not a readable mask file, truncated or damaged ({error})") from None
    for (name, shape), payload, arrays in zip(shapes, payloads, streams):
        payload.check_sizes(path, name, shape, arrays)
    if file_checksum(version, metadata, [array for arrays in streams for array in arrays]) != metadata.get("sha256"):
        raise _damaged(path, "checksum mismatch")
    masks = {name: torch.from_numpy(payload.decoded(path, name, shape, arrays).reshape(shape))
             for (name, shape), payload, arrays in zip(shapes, payloads, streams)}
    return MaskFile(path=path, masks=masks, metadata=metadata)
