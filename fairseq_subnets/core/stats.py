"""Mask algebra and statistics over mask sets (True = kept).

Every statistic is a ratio of counts (kept weights, overlaps) summed over a group of matrices:
`total`, `layer` (encoder layer index) or `kind` (q, k, v, out, fc1, fc2), or `matrix` (each
name). Counting works on the bool tensors with count_nonzero and reused scratch buffers, which
takes well under a second for two 300M-weight masks.

  sparsity   = pruned / weights
  IOU(a, b)  = |a & b| / |a | b| over kept weights (Storey Sec. 4.3, Yang Eq. 2)
  cosine     = |a & b| / sqrt(|a| |b|), the cosine of the masks as 0/1 vectors
  union ratio UR(m1..mn) = |m1 | ... | mn| / weights (Yang Eq. 3)
Two empty masks count as identical (IOU and cosine 1); an empty and a non-empty one as 0.
"""
import csv
import math
from typing import Callable, Dict, Mapping, Sequence, Tuple

import numpy as np
import torch

from .targets import MaskSet, parse_weight_name

GROUPINGS = ("total", "layer", "kind", "matrix")
METRICS = ("iou", "cosine")


def group_of(name: str, by: str) -> str:
    """The group a mask name falls in: 'total', its layer index, its kind, or the name itself;
    names outside the wav2vec2 encoder layers go to 'other' when grouping by layer or kind."""
    if by == "total":
        return "total"
    if by == "matrix":
        return name
    parsed = parse_weight_name(name)
    if parsed is None:
        return "other"
    if by == "layer":
        return str(parsed[0])
    if by == "kind":
        return parsed[1]
    raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {by!r}")


def check_same_layout(mask_sets: Sequence[Mapping[str, torch.Tensor]], labels: Sequence[str] = None) -> None:
    """Fails naming the first mask set that differs from the first one, then the weight on which it
    differs (a name only one of them has, or another shape)."""
    labels = labels or [f"mask set {i + 1}" for i in range(len(mask_sets))]
    first = mask_sets[0]
    same_weights = "masks must cover the same weights"
    for label, masks in zip(labels[1:], mask_sets[1:]):
        for name in list(first) + [n for n in masks if n not in first]:
            if name not in masks:
                raise ValueError(f"{label}: no mask for {name}, which {labels[0]} has; {same_weights}")
            if name not in first:
                raise ValueError(f"{label}: mask for {name}, which {labels[0]} lacks; {same_weights}")
            if first[name].shape != masks[name].shape:
                raise ValueError(f"{label}: {name} has shape {tuple(masks[name].shape)} "
                                 f"but {tuple(first[name].shape)} in {labels[0]}")


def _combine(mask_sets: Sequence[MaskSet], operation) -> MaskSet:
    check_same_layout(mask_sets)
    combined = {}
    for name in mask_sets[0]:
        result = mask_sets[0][name].clone()
        for masks in mask_sets[1:]:
            operation(result, masks[name], out=result)
        combined[name] = result
    return combined


def union(*mask_sets: MaskSet) -> MaskSet:
    """Weights kept by any mask set."""
    return _combine(mask_sets, torch.logical_or)


def intersection(*mask_sets: MaskSet) -> MaskSet:
    """Weights kept by every mask set."""
    return _combine(mask_sets, torch.logical_and)


def difference(a: MaskSet, b: MaskSet) -> MaskSet:
    """Weights kept by `a` but not by `b`."""
    return intersection(a, complement(b))


def complement(a: MaskSet) -> MaskSet:
    """Pruned and kept swapped, within the same weights."""
    return {name: torch.logical_not(mask) for name, mask in a.items()}


def _kept(mask: torch.Tensor) -> int:
    return int(torch.count_nonzero(mask))


def _overlap(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> int:
    both = scratch.view(-1)[: a.numel()].view(a.shape)
    return _kept(torch.logical_and(a, b, out=both))


def _scratch_for(masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One bool buffer as large as the largest mask: fresh large allocations per matrix cost more
    than the logical operation itself."""
    device = next((m.device for m in masks.values()), None)
    return torch.empty(max((m.numel() for m in masks.values()), default=0), dtype=torch.bool, device=device)


def _by_group(values: Mapping[str, Tuple[int, ...]], by: str) -> Dict[str, np.ndarray]:
    """Sums per-matrix count tuples over the groups of `by` (first-seen order), then over all
    matrices as a last 'total' group, so every grouped result also carries the total."""
    sums: Dict[str, np.ndarray] = {}
    for grouping in (by, "total") if by != "total" else ("total",):
        for name, counts in values.items():
            group = group_of(name, grouping)
            sums[group] = sums.get(group, 0) + np.asarray(counts, dtype=np.int64)
    return sums


def kept_counts(masks: MaskSet, by: str = "total") -> Dict[str, Tuple[int, int]]:
    """group -> (kept weights, weights), groups of `by` then 'total'."""
    counts = {name: (_kept(mask), mask.numel()) for name, mask in masks.items()}
    return {group: (int(kept), int(weights)) for group, (kept, weights) in _by_group(counts, by).items()}


def sparsity_by(masks: MaskSet, by: str = "total") -> Dict[str, float]:
    """Fraction of pruned weights per group of `by`, then 'total'."""
    return {group: 1.0 - kept / weights if weights else 0.0 for group, (kept, weights) in kept_counts(masks, by).items()}


def sparsity(masks: MaskSet) -> float:
    """Fraction of pruned weights over the whole mask set."""
    return sparsity_by(masks).get("total", 0.0)


def _iou(kept_a: int, kept_b: int, both: int) -> float:
    either = kept_a + kept_b - both
    return both / either if either else 1.0


def _cosine(kept_a: int, kept_b: int, both: int) -> float:
    if kept_a == 0 or kept_b == 0:
        return 1.0 if kept_a == kept_b else 0.0
    return both / math.sqrt(kept_a * kept_b)


_METRIC_FUNCTIONS: Dict[str, Callable[[int, int, int], float]] = {"iou": _iou, "cosine": _cosine}


def _metric(metric: str) -> Callable[[int, int, int], float]:
    if metric not in _METRIC_FUNCTIONS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return _METRIC_FUNCTIONS[metric]


def pairwise(mask_sets: Sequence[MaskSet], metric: str = "iou", by: str = "total") -> Dict[str, np.ndarray]:
    """group -> N x N matrix of `metric` between every two mask sets (diagonal 1: a mask with
    itself), groups of `by` then 'total'. Each mask's kept count is computed once, each pair's
    overlap once."""
    score = _metric(metric)
    check_same_layout(mask_sets)
    scratch = _scratch_for(mask_sets[0])
    kept = [_by_group({n: (_kept(m),) for n, m in masks.items()}, by) for masks in mask_sets]
    groups = list(kept[0])
    matrices = {group: np.eye(len(mask_sets)) for group in groups}
    for i in range(len(mask_sets)):
        for j in range(i + 1, len(mask_sets)):
            overlaps = {n: (_overlap(mask_sets[i][n], mask_sets[j][n], scratch),) for n in mask_sets[i]}
            for group, (both,) in _by_group(overlaps, by).items():
                value = score(int(kept[i][group][0]), int(kept[j][group][0]), int(both))
                matrices[group][i, j] = matrices[group][j, i] = value
    return matrices


def compare_by(a: MaskSet, b: MaskSet, metric: str = "iou", by: str = "total") -> Dict[str, float]:
    """`metric` (iou or cosine) between two mask sets, per group of `by`, then 'total'."""
    return {group: float(matrix[0, 1]) for group, matrix in pairwise([a, b], metric, by).items()}


def iou(a: MaskSet, b: MaskSet) -> float:
    """Intersection over union of the kept weights of two mask sets."""
    return compare_by(a, b, "iou")["total"]


def cosine_by_layer(a: MaskSet, b: MaskSet) -> Dict[str, float]:
    """Cosine similarity of the two masks as 0/1 vectors, per encoder layer then 'total'
    (S3-Router analysis)."""
    return compare_by(a, b, "cosine", "layer")


def union_ratio(mask_sets: Sequence[MaskSet]) -> float:
    """|m1 | ... | mn| / number of weights (Yang Eq. 3)."""
    check_same_layout(mask_sets)
    scratch = _scratch_for(mask_sets[0])
    either = weights = 0
    for name, first in mask_sets[0].items():
        combined = scratch.view(-1)[: first.numel()].view(first.shape)
        combined.copy_(first)
        for masks in mask_sets[1:]:
            torch.logical_or(combined, masks[name], out=combined)
        either += _kept(combined)
        weights += first.numel()
    return either / weights if weights else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (as Spearman needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator else math.nan


def correlate(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    """Pearson and Spearman correlation of two N x N matrices over their entries above the
    diagonal (each pair once, self-similarity excluded); NaN when either side is constant."""
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"correlate needs two square matrices of one size, got {a.shape} and {b.shape}")
    upper = np.triu_indices(a.shape[0], k=1)
    x, y = np.asarray(a, dtype=float)[upper], np.asarray(b, dtype=float)[upper]
    if len(x) < 3:
        raise ValueError(f"correlation needs at least 3 pairs (3 mask sets), got {len(x)}")
    return {"pearson": _pearson(x, y), "spearman": _pearson(_average_ranks(x), _average_ranks(y)), "pairs": len(x)}


def read_labelled_matrix(path: str, labels: Sequence[str]) -> np.ndarray:
    """A square matrix from a CSV whose first row is ',label1,label2,...' and each next row
    'label,v1,v2,...', reordered to `labels`; errors name the file and the offending label."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror})") from None
    if not rows:
        raise ValueError(f"{path}: empty matrix file")
    columns = [cell.strip() for cell in rows[0][1:]]
    values: Dict[Tuple[str, str], float] = {}
    for row in rows[1:]:
        if len(row) != len(columns) + 1:
            raise ValueError(f"{path}: row {row[0].strip()!r} has {len(row) - 1} values for {len(columns)} columns")
        for column, cell in zip(columns, row[1:]):
            try:
                values[row[0].strip(), column] = float(cell)
            except ValueError:
                raise ValueError(f"{path}: row {row[0].strip()!r}, column {column!r}: {cell!r} is not a number") from None
    row_labels = {row[0].strip() for row in rows[1:]}
    for label in labels:
        if label not in columns:
            raise ValueError(f"{path}: no column labelled {label!r} (columns: {', '.join(columns)})")
        if label not in row_labels:
            raise ValueError(f"{path}: no row labelled {label!r}")
    return np.array([[values[r, c] for c in labels] for r in labels])


def correlate_with_file(
    matrices: Mapping[str, np.ndarray], labels: Sequence[str], path: str
) -> Dict[str, Dict[str, float]]:
    """Correlation of each group's pairwise matrix with the user's labelled CSV matrix."""
    other = read_labelled_matrix(path, labels)
    return {group: correlate(matrix, other) for group, matrix in matrices.items()}
