"""Compact state dicts: masked weight matrices stored as their mask and their kept values, each
coded near its entropy, every other tensor as it is; checksummed, never pickled. Pure torch/numpy.

Why: a matrix pruned to 90% holds 10% of its values; its mask costs about 0.47 bits per weight
when its gaps are entropy-coded, where a dense float32 matrix costs 32. The kept values stay
float32 and bit-exact, so a model decodes from them exactly as from the dense weights.

A matrix (`encode_matrix`):
  * the mask is `weight != 0` (a kept weight that is exactly 0 is stored as pruned: the same
    value), coded as mask files code masks (`maskfile.encode_mask`: Golomb-Rice codes of the gaps
    between the rarer value, or raw bits near 50%), in the streams `mask.0`, `mask.1`, ...;
  * the kept values, in row-major order, are split by byte: the three low bytes of each float32
    (the mantissa and the exponent's lowest bit, close to uniformly random) are stored as they
    are (`low_bytes`); the high byte (the sign and 7 exponent bits) takes a handful of distinct
    values in one matrix, since kept weights span a few octaves: it is stored as an index into the
    sorted table of those values (`high_table`), in ceil(log2(table size)) bits per value, bit plane
    by bit plane (`high_index`). That saves 4 to 6 of 32 bits per kept value, which the size target
    of the compact checkpoint needs once the unpruned feature extractor is counted.

A compact state dict holds, besides the plain tensors, each coded matrix's streams as uint8 tensors
named `<weight key>::<stream>` and `METADATA_KEY`, a uint8 tensor of JSON text: the format and
version, the matrices (key, shape, encoding) and the plain tensors (key, dtype, shape) in order,
the sha256 of the context the state was written in (the bytes of what its file holds beside the
state: a checkpoint's config, which says what model the state belongs to), and a sha256 over
that description, then every stream, then every plain tensor's bytes. So a flipped bit anywhere,
and an added, removed, renamed or reshaped tensor, fail the checksum, and so does an edited
config, checked wherever the file's context is at hand (a model's `load_state_dict` sees only the
state, so the file is checked before the model is built). `read_compact_state` checks it before
decoding anything, and each matrix's fields and sizes before allocating from them, as mask files
are checked.
"""
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .maskfile import MaskFileError, decode_mask, encode_mask

FORMAT = "fairseq-subnets-compact"
VERSION = 2
"""2: the description holds the context's digest (version 1 files were never released)."""
METADATA_KEY = "compact_checkpoint.metadata"
"""The state-dict key of the description and checksum (a uint8 tensor of JSON text)."""
STREAM_SEPARATOR = "::"
VALUE_STREAMS = ("low_bytes", "high_table", "high_index")
LOW_BYTES = 3
"""Bytes of a float32 stored as they are (little-endian: the mantissa and the exponent's lowest bit)."""


class CompactStateError(ValueError):
    """A compact state is damaged, tampered with or of another version; the message names its
    source (`label`) first."""


def _damaged(label: str, detail: str) -> CompactStateError:
    return CompactStateError(f"{label}: damaged compact checkpoint ({detail})")


def _packed_planes(numbers: np.ndarray, bits: int) -> np.ndarray:
    planes = (numbers[None, :] >> np.arange(bits, dtype=numbers.dtype)[:, None]) & 1
    return np.packbits(planes.astype(np.bool_).reshape(-1), bitorder="little")


def _unpacked_planes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(packed, count=bits * count, bitorder="little").reshape(bits, count)
    numbers = np.zeros(count, dtype=np.int64)
    for bit, plane in enumerate(planes):
        numbers |= plane.astype(np.int64) << bit
    return numbers


def encode_matrix(weight: torch.Tensor) -> Tuple[Dict[str, object], Dict[str, np.ndarray]]:
    """The encoding description and the uint8 streams of one float32 matrix (see the module
    docstring)."""
    flat = weight.detach().cpu().contiguous().reshape(-1)
    kept = flat != 0
    mask_description, mask_streams = encode_mask(kept)
    values = flat[kept].numpy().astype("<f4", copy=False).view(np.uint8).reshape(-1, 4)
    high = values[:, 3]
    table = np.unique(high)
    index_bits = (len(table) - 1).bit_length() if len(table) else 0
    streams = {f"mask.{position}": stream for position, stream in enumerate(mask_streams)}
    streams["low_bytes"] = np.ascontiguousarray(values[:, :LOW_BYTES]).reshape(-1)
    streams["high_table"] = table.astype(np.uint8)
    streams["high_index"] = _packed_planes(np.searchsorted(table, high).astype(np.int64), index_bits)
    description = {"mask": mask_description, "mask_streams": len(mask_streams), "kept": int(high.size),
                   "index_bits": index_bits}
    return description, streams


def stream_names(description: Mapping[str, object]) -> List[str]:
    return [f"mask.{position}" for position in range(description["mask_streams"])] + list(VALUE_STREAMS)


def _is_byte_vector(array) -> bool:
    return isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 1


@dataclass
class CompactMatrix:
    """One coded matrix, checked for sizes; decoded (mask bits, kept values) on demand, one
    matrix at a time, so a whole model's masks are never held as bytes at once."""

    label: str
    key: str
    shape: Tuple[int, int]
    description: Dict[str, object]
    streams: Dict[str, np.ndarray]

    def check_sizes(self) -> None:
        """What the stored counts imply against the stream lengths and the shape (the mask's own
        checks run when it is decoded)."""
        kept, bits = self.description["kept"], self.description["index_bits"]
        table = self.streams["high_table"]
        if not all(_is_byte_vector(stream) for stream in self.streams.values()):
            raise _damaged(self.label, f"{self.key}: a stream is not a vector of bytes")
        if kept > math.prod(self.shape) or self.streams["low_bytes"].size != kept * LOW_BYTES:
            raise _damaged(self.label, f"{self.key}: {self.streams['low_bytes'].size} low bytes for {kept} kept values")
        fitting_bits = (table.size - 1).bit_length() if table.size else 0
        if (table.size > 256 or (table.size == 0) != (kept == 0) or np.any(np.diff(table.astype(np.int16)) <= 0)
                or bits != fitting_bits):
            raise _damaged(self.label, f"{self.key}: a table of {table.size} high bytes indexed in {bits} bits")
        if self.streams["high_index"].size != (kept * bits + 7) // 8:
            raise _damaged(self.label, f"{self.key}: {self.streams['high_index'].size} index bytes for {kept} values")

    def decoded(self) -> Tuple[np.ndarray, np.ndarray]:
        """(flat mask bits, the kept values as float32 in row-major order)."""
        names = stream_names(self.description)[:self.description["mask_streams"]]
        try:
            bits = decode_mask(f"{self.label} (mask of {self.key})", self.key, self.shape, self.description["mask"],
                               [self.streams[name] for name in names])
        except MaskFileError as error:
            raise CompactStateError(str(error)) from None
        kept = self.description["kept"]
        if int(np.count_nonzero(bits)) != kept:
            raise _damaged(self.label, f"{self.key}: the mask keeps {int(np.count_nonzero(bits))} weights, "
                                       f"the values are {kept}")
        table = self.streams["high_table"]
        index = _unpacked_planes(self.streams["high_index"], self.description["index_bits"], kept)
        if kept and int(index.max()) >= table.size:
            raise _damaged(self.label, f"{self.key}: a high-byte index past its table of {table.size}")
        values = np.empty((kept, 4), dtype=np.uint8)
        values[:, :LOW_BYTES] = self.streams["low_bytes"].reshape(kept, LOW_BYTES)
        values[:, 3] = table[index]
        return bits, values.reshape(-1).view("<f4").astype(np.float32, copy=False)

    def dense(self) -> torch.Tensor:
        """The full float32 matrix (exact zeros where pruned)."""
        bits, values = self.decoded()
        weight = np.zeros(bits.size, dtype=np.float32)
        weight[bits] = values
        return torch.from_numpy(weight.reshape(self.shape))

    def csr(self) -> torch.Tensor:
        """The matrix in torch's CSR layout, built from the mask and the kept values alone (the
        dense matrix is never made), with int32 indices where they fit (half the index memory of
        torch's int64 default; torch's CPU CSR product takes both). Its invariants hold by
        construction (rows ends from the mask's row counts, columns ascending within a row), so
        torch's check of them is skipped."""
        bits, values = self.decoded()
        rows, columns = self.shape
        index_type = np.int32 if max(bits.size, values.size) < 2 ** 31 else np.int64
        row_ends = np.zeros(rows + 1, dtype=index_type)
        np.cumsum(bits.reshape(rows, columns).sum(axis=1), out=row_ends[1:])
        column_of = (np.flatnonzero(bits) % columns).astype(index_type)
        with warnings.catch_warnings():  # torch's beta note; what is used here is tested against dense
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(torch.from_numpy(row_ends), torch.from_numpy(column_of),
                                           torch.from_numpy(values), size=self.shape, check_invariants=False)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8))


def context_digest(context: bytes) -> str:
    return hashlib.sha256(context).hexdigest()


def _checksum(description: Mapping[str, object], streams: Sequence[np.ndarray], tensors: Sequence[torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps([FORMAT, VERSION, description["matrices"], description["tensors"],
                                        description["context_sha256"]]).encode())
    for array in streams:
        digest.update(memoryview(array))
    for tensor in tensors:
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def compact_state(state: Mapping[str, torch.Tensor], matrix_keys: Sequence[str], context: bytes) -> Dict[str, torch.Tensor]:
    """`state` with the float32 matrices under `matrix_keys` coded, written in `context` (see the
    module docstring)."""
    matrices, streams = [], []
    coded: Dict[str, torch.Tensor] = {}
    for key in matrix_keys:
        weight = state[key]
        if weight.dtype != torch.float32 or weight.dim() != 2:
            raise ValueError(f"{key}: a compact matrix is a 2-D float32 weight, not {weight.dtype} {tuple(weight.shape)}")
        encoding, matrix_streams = encode_matrix(weight)
        matrices.append({"key": key, "shape": list(weight.shape), "encoding": encoding})
        for name in stream_names(encoding):
            streams.append(matrix_streams[name])
            coded[f"{key}{STREAM_SEPARATOR}{name}"] = torch.from_numpy(matrix_streams[name])
    plain = {key: value for key, value in state.items() if key not in set(matrix_keys)}
    description = {"format": FORMAT, "version": VERSION, "matrices": matrices,
                   "tensors": [[key, str(value.dtype).replace("torch.", ""), list(value.shape)] for key, value in plain.items()],
                   "context_sha256": context_digest(context)}
    description["sha256"] = _checksum(description, streams, list(plain.values()))
    metadata = np.frombuffer(json.dumps(description).encode(), dtype=np.uint8).copy()
    return {**plain, **coded, METADATA_KEY: torch.from_numpy(metadata)}


def is_compact_state(state: Mapping[str, object]) -> bool:
    return METADATA_KEY in state


def _description(label: str, metadata) -> Dict[str, object]:
    if not isinstance(metadata, torch.Tensor) or metadata.dtype != torch.uint8 or metadata.dim() != 1:
        raise _damaged(label, f"{METADATA_KEY} is not a vector of bytes")
    try:
        description = json.loads(bytes(metadata.numpy()).decode())
    except (UnicodeDecodeError, ValueError):
        raise _damaged(label, f"{METADATA_KEY} is not JSON") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise _damaged(label, f"{METADATA_KEY} does not describe a {FORMAT} state")
    if description.get("version") != VERSION:
        raise CompactStateError(f"{label}: compact checkpoint version {description.get('version')!r}; this "
                                f"fairseq-subnets reads version {VERSION}")
    matrices, tensors = description.get("matrices"), description.get("tensors")
    if not (isinstance(matrices, list) and isinstance(tensors, list) and isinstance(description.get("sha256"), str)
            and isinstance(description.get("context_sha256"), str)
            and all(isinstance(m, dict) and set(m) == {"key", "shape", "encoding"} and isinstance(m["key"], str)
                    and _is_matrix_shape(m["shape"]) and _is_encoding(m["encoding"]) for m in matrices)
            and all(isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) for t in tensors)):
        raise _damaged(label, f"{METADATA_KEY} lacks or misstates matrices, tensors or sha256")
    return description


def _is_matrix_shape(shape) -> bool:
    return isinstance(shape, list) and len(shape) == 2 and all(type(size) is int and size > 0 for size in shape)


def _is_encoding(encoding) -> bool:
    return (isinstance(encoding, dict) and set(encoding) == {"mask", "mask_streams", "kept", "index_bits"}
            and all(type(encoding[key]) is int and encoding[key] >= 0 for key in ("mask_streams", "kept", "index_bits"))
            and encoding["mask_streams"] <= 2 and encoding["index_bits"] <= 8)


def read_compact_state(state: Mapping[str, torch.Tensor], label: str,
                       context: Optional[bytes] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, CompactMatrix]]:
    """(the plain tensors, the coded matrices by weight key) of a compact state, its checksum and
    every matrix's sizes checked first, and the context it was written in when `context` is given;
    a CompactStateError naming `label` otherwise."""
    description = _description(label, state.get(METADATA_KEY))
    matrices: Dict[str, CompactMatrix] = {}
    expected = {METADATA_KEY}
    for entry in description["matrices"]:
        names = stream_names(entry["encoding"])
        keys = [f"{entry['key']}{STREAM_SEPARATOR}{name}" for name in names]
        missing = [key for key in keys if key not in state]
        if missing or entry["key"] in matrices:
            raise _damaged(label, f"holds no {missing[0]}" if missing else f"{entry['key']} is listed twice")
        expected.update(keys)
        streams = {name: state[key].numpy() if isinstance(state[key], torch.Tensor) else None
                   for name, key in zip(names, keys)}
        matrices[entry["key"]] = CompactMatrix(label, entry["key"], tuple(entry["shape"]), entry["encoding"], streams)
    plain = {}
    for key, dtype, shape in description["tensors"]:
        value = state.get(key)
        if not isinstance(value, torch.Tensor) or str(value.dtype).replace("torch.", "") != dtype \
                or list(value.shape) != shape:
            raise _damaged(label, f"{key} is missing or not the {dtype} {shape} tensor its description lists")
        plain[key] = value
    expected.update(plain)
    extra = sorted(set(state) - expected)
    if extra:
        raise _damaged(label, f"holds {extra[0]}, which its description does not list")
    for matrix in matrices.values():
        matrix.check_sizes()
    streams = [matrix.streams[name] for matrix in matrices.values() for name in stream_names(matrix.description)]
    if _checksum(description, streams, list(plain.values())) != description["sha256"]:
        raise _damaged(label, "checksum mismatch")
    if context is not None and context_digest(context) != description["context_sha256"]:
        raise _damaged(label, "its config or another field beside the weights differs from what was written")
    return plain, matrices

