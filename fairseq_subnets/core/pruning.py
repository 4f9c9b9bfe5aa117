"""Pruning criteria: weights in, a mask set with an exact kept count out.

Counting rule (the same as `torch.nn.utils.prune` for a float amount): a sparsity `s` over `n`
units prunes `round(s * n)` of them (Python's round, so halves go to the even neighbour) and keeps
the rest. Global criteria count over all selected weights together, the per-layer ones over each
matrix, the block criterion over each matrix's blocks.

Order rule: units are pruned in increasing order of score; among equal scores the unit that comes
first (mask-set order, then row-major position) is pruned first. This is a total order, so the
result is deterministic and masks for increasing sparsity under one criterion are nested. The
masks equal torch's except, possibly, for which of several weights with exactly the threshold
score are kept: torch's `topk` orders such ties arbitrarily (a handful of them is normal among
300M float32 weights; none among a few thousand random ones).

The selection never concatenates the weights: it reads them in chunks through reused scratch
buffers, places a window around the threshold from a strided sample, counts exactly how many
scores fall below and inside it, and takes the exact order statistic among the few inside.
"""
import hashlib
import math
from typing import Callable, Iterator, Mapping, Optional, Tuple

import torch

from .targets import MaskSet

CHUNK = 1 << 20
"""Elements read at a time; scratch memory is a few buffers of this size."""
WINDOW_LIMIT = 1 << 23
"""Most scores gathered from inside the threshold window before the window is narrowed instead."""
SAMPLE_SIZE = 1 << 20
"""At most this many scores are sampled to place the first window (1/256 of them, at least
SAMPLE_MIN); with fewer than SAMPLE_MIN scores all of them are gathered at once."""
SAMPLE_MIN = 1 << 16
_WINDOW_SIGMAS = 8.0

METHODS = ("global-l1", "layer-l1", "block-l2", "global-block-l2", "random")
BLOCK_METHODS = {"block-l2": "layer", "global-block-l2": "global"}
SCOPES = {"global-l1": "global", "layer-l1": "per-matrix", "block-l2": "per-matrix", "global-block-l2": "global",
          "random": "per-matrix"}
"""Over which weights each method ranks (written into the mask file's metadata)."""
"""The block criteria and the scope each ranks its blocks over."""

Transform = Optional[Callable[[torch.Tensor, torch.Tensor], None]]
"""Writes the score of a chunk into a float scratch buffer: transform(chunk, out)."""


def pruned_count(sparsity: float, total: int) -> int:
    """round(sparsity * total): how many of `total` units a sparsity prunes."""
    if not 0.0 <= sparsity <= 1.0 or isinstance(sparsity, bool):
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity!r}")
    return round(sparsity * total)


def absolute(chunk: torch.Tensor, out: torch.Tensor) -> None:
    """The L1 magnitude score |w|."""
    if chunk.dtype == out.dtype:
        torch.abs(chunk, out=out)
    else:
        out.copy_(chunk).abs_()


def _identity(chunk: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(chunk)


def _score_dtype(tensors) -> torch.dtype:
    """float64 if any tensor is float64 (exact), else float32 (exact for half and bfloat16)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class _Scratch:
    """Reused buffers: allocating a fresh chunk-sized tensor per operation costs more than the
    operation itself on small CPUs."""

    def __init__(self, dtype: torch.dtype, size: int, device: torch.device):
        self.score = torch.empty(size, dtype=dtype, device=device)
        self.flags = [torch.empty(size, dtype=torch.bool, device=device) for _ in range(3)]

    def views(self, length: int):
        return (self.score[:length], *(flag[:length] for flag in self.flags))


class _FloatOrder:
    """Floats <-> integers with the same order (-0.0 and 0.0 share 0), so that 'the next float'
    and 'halfway between two floats' are integer arithmetic."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.int_dtype = torch.int64 if dtype == torch.float64 else torch.int32
        self.sign = 2 ** (torch.iinfo(self.int_dtype).bits - 1)

    def key(self, value: float) -> int:
        bits = torch.tensor(value + 0.0, dtype=self.dtype).view(self.int_dtype).item()
        return bits if bits >= 0 else -(bits + self.sign)

    def value(self, key: int) -> float:
        bits = key if key >= 0 else -key - self.sign
        return torch.tensor(bits, dtype=self.int_dtype).view(self.dtype).item()

    def next(self, value: float) -> float:
        return self.value(self.key(value) + 1)

    def previous(self, value: float) -> float:
        return self.value(self.key(value) - 1)

    def between(self, low: float, high: float) -> float:
        """A float in (low, high] for low < high."""
        return self.value((self.key(low) + self.key(high) + 1) // 2)


def _chunks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """Consecutive flat views of at most CHUNK elements, in row-major order."""
    flat = tensor.detach().reshape(-1)
    return (flat[start : start + CHUNK] for start in range(0, flat.numel(), CHUNK))


def _sample(scores, transform, dtype, total: int) -> torch.Tensor:
    """A strided sample of the scores, sorted."""
    stride = max(1, total // min(SAMPLE_SIZE, max(SAMPLE_MIN, total // 256)))
    parts = []
    for tensor in scores.values():
        picked = tensor.detach().reshape(-1)[::stride]
        out = torch.empty(picked.shape, dtype=dtype, device=picked.device)
        transform(picked, out)
        parts.append(out)
    return torch.sort(torch.cat(parts)).values


def _first_window(sample: torch.Tensor, rank: int, total: int) -> Tuple[float, float]:
    """Bounds that hold the rank-th smallest score with near certainty if the sample is typical."""
    size = sample.numel()
    fraction = rank / total
    spread = _WINDOW_SIGMAS * math.sqrt(size * fraction * (1 - fraction)) + 2
    low_index = math.floor(size * fraction - spread)
    high_index = math.ceil(size * fraction + spread)
    low = sample[low_index].item() if low_index >= 0 else -math.inf
    high = sample[high_index].item() if high_index < size else math.inf
    return low, high


def _scan(scores, transform, scratch: _Scratch, bounds, gather: bool = False):
    """Exact counts, over all scores, of each bound (comparison, value), e.g. (torch.lt, low)
    counts scores < low. With `gather`, also the scores the second bound counts and the first
    does not, if there are at most WINDOW_LIMIT of them (else None)."""
    counts = [0] * len(bounds)
    inside = [] if gather else None
    for tensor in scores.values():
        for chunk in _chunks(tensor):
            score, *flags = scratch.views(chunk.numel())
            transform(chunk, score)
            chunk_counts = []
            for (compare, value), flag in zip(bounds, flags):
                compare(score, value, out=flag)
                chunk_counts.append(int(torch.count_nonzero(flag)))
            counts = [total + count for total, count in zip(counts, chunk_counts)]
            if inside is not None and counts[1] - counts[0] > WINDOW_LIMIT:
                inside = None
            if inside is not None and chunk_counts[1] > chunk_counts[0]:
                inside.append(_flagged(score, torch.logical_xor(flags[1], flags[0], out=flags[1])))
    if inside is not None:
        inside = torch.cat(inside) if inside else scratch.score[:0]
    return counts, inside


def _flagged(values: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """values[flags] for sparse flags: finds the 8-element groups holding a flag through an int64
    view of the flags first, which is several times faster than masked_select on a whole chunk."""
    if values.numel() % 8:
        return torch.masked_select(values, flags)
    groups = flags.view(torch.int64).nonzero().view(-1)
    return values.view(-1, 8)[groups].view(-1)[flags.view(-1, 8)[groups].view(-1)]


def _nan_error(scores) -> ValueError:
    name = next((name for name, t in scores.items() if torch.isnan(t).any()), "a tensor")
    return ValueError(f"{name}: holds NaN; cannot rank it")


def _threshold(scores, transform, scratch: _Scratch, rank: int, total: int):
    """(t, number of scores < t, number of scores <= t) for the rank-th smallest score t (1-based).

    One pass counts the scores below and inside a window placed from a sample and gathers those
    inside; the rank-th is then an order statistic of the few gathered. If the rank lies outside
    the window, the window moves to that side. If too many scores lie inside (massive ties), a
    pass checks whether the rank falls on either end value and otherwise halves the window in
    float order; this ends because the window holds fewer representable floats each time."""
    order = _FloatOrder(scratch.score.dtype)
    if total <= SAMPLE_MIN:
        low, high = -math.inf, math.inf
    else:
        low, high = _first_window(_sample(scores, transform, order.dtype, total), rank, total)
    while True:
        (below, at_most), inside = _scan(scores, transform, scratch, [(torch.lt, low), (torch.le, high)], gather=True)
        if rank <= below:
            low, high = -math.inf, order.previous(low)
        elif rank > at_most:
            if high == math.inf:
                raise _nan_error(scores)
            low, high = order.next(high), math.inf
        elif inside is not None:
            value = torch.kthvalue(inside, rank - below).values
            return value.item(), below + int((inside < value).sum()), below + int((inside <= value).sum())
        elif low == high:
            return low, below, at_most
        else:
            middle = order.between(low, high)
            (up_to_low, under_middle, under_high), _ = _scan(
                scores, transform, scratch, [(torch.le, low), (torch.lt, middle), (torch.lt, high)]
            )
            if rank <= up_to_low:
                return low, below, up_to_low
            if rank > under_high:
                return high, under_high, at_most
            if rank <= under_middle:
                low, high = order.next(low), order.previous(middle)
            else:
                low, high = middle, order.previous(high)


def prune_smallest(
    scores: Mapping[str, torch.Tensor], n_prune: int, transform: Transform = None
) -> MaskSet:
    """Masks that prune exactly the `n_prune` smallest scores over all tensors together (ties: the
    earlier unit goes first, see the module docstring). `transform(chunk, out)` turns stored values
    into scores on the fly (e.g. `absolute` for weights), so no score tensor is materialised."""
    transform = transform or _identity
    total = sum(tensor.numel() for tensor in scores.values())
    if not 0 <= n_prune <= total:
        raise ValueError(f"cannot prune {n_prune} of {total} units")
    if n_prune == 0 or n_prune == total:
        return {name: torch.full(t.shape, n_prune == 0, dtype=torch.bool, device=t.device) for name, t in scores.items()}
    devices = {t.device for t in scores.values()}
    if len(devices) > 1:
        raise ValueError(f"scores lie on several devices ({', '.join(sorted(map(str, devices)))}); move them to one")
    largest = max(t.numel() for t in scores.values())
    scratch = _Scratch(_score_dtype(scores.values()), min(CHUNK, largest), devices.pop())
    threshold, below, at_most = _threshold(scores, transform, scratch, n_prune, total)
    ties_to_prune = n_prune - below
    keep_some_ties = ties_to_prune < at_most - below
    masks = {name: torch.empty(t.shape, dtype=torch.bool, device=t.device) for name, t in scores.items()}
    ties_seen = kept_count = 0
    for name, tensor in scores.items():
        for start, chunk in zip(range(0, tensor.numel(), CHUNK), _chunks(tensor)):
            score, is_tie, *_ = scratch.views(chunk.numel())
            transform(chunk, score)
            kept = masks[name].view(-1)[start : start + chunk.numel()]
            torch.gt(score, threshold, out=kept)
            if keep_some_ties:
                torch.eq(score, threshold, out=is_tie)
                ties = int(torch.count_nonzero(is_tie))
                if ties_seen + ties > ties_to_prune:
                    positions = is_tie.nonzero().view(-1)
                    kept[positions[max(0, ties_to_prune - ties_seen) :]] = True
                ties_seen += ties
            kept_count += int(torch.count_nonzero(kept))
    if kept_count != total - n_prune:
        raise _nan_error(scores)
    return masks


def global_l1_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> MaskSet:
    """Prunes the round(s * N) smallest |w| over all given matrices together (Storey Sec. 3.3).
    Equals torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=s) up to the
    order among exactly equal magnitudes at the threshold."""
    total = sum(weight.numel() for weight in weights.values())
    return prune_smallest(weights, pruned_count(sparsity, total), transform=absolute)


def layer_l1_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> MaskSet:
    """Prunes the round(s * n) smallest |w| of each matrix separately (uniform sparsity).
    Equals torch.nn.utils.prune.l1_unstructured(module, 'weight', amount=s) per matrix."""
    masks = {}
    for name, weight in weights.items():
        masks.update(prune_smallest({name: weight}, pruned_count(sparsity, weight.numel()), absolute))
    return masks


def parse_block(text: str) -> Tuple[int, int]:
    """'8x1' -> (8, 1): 8 consecutive weights along the input dimension of a row x 1 row."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"block: expected INPUTSxROWS such as '8x1' or '4x2', got {text!r}")
    return int(parts[0]), int(parts[1])


def blocks_tile(shape, block: Tuple[int, int]) -> bool:
    """Whether blocks of `block` (inputs, rows) tile a matrix of `shape` exactly."""
    inputs, rows = block
    return len(shape) == 2 and shape[0] % rows == 0 and shape[1] % inputs == 0


def block_norms(weight: torch.Tensor, block: Tuple[int, int]) -> torch.Tensor:
    """L2 norm of each block of a (rows, inputs) matrix; blocks must tile it exactly, because a
    partial block would be scored on fewer weights than the others."""
    inputs, rows = block
    if not blocks_tile(weight.shape, block):
        raise ValueError(
            f"block {inputs}x{rows} does not tile a weight of shape {tuple(weight.shape)}: "
            f"need (a multiple of {rows}, a multiple of {inputs})"
        )
    return group_norms(weight.detach().to(_score_dtype([weight])), block)


def group_norms(weight: torch.Tensor, block: Tuple[int, int]) -> torch.Tensor:
    """L2 norm of each block of a (rows, inputs) matrix that the blocks tile, differentiable (the
    gradient of an all-zero block is 0): the groups of group lasso and of block pruning."""
    inputs, rows = block
    grid = weight.reshape(weight.shape[0] // rows, rows, weight.shape[1] // inputs, inputs)
    return torch.linalg.vector_norm(grid, dim=(1, 3))


def block_l2_masks(
    weights: Mapping[str, torch.Tensor], sparsity: float, block: Tuple[int, int] = (8, 1), scope: str = "layer"
) -> MaskSet:
    """Prunes whole blocks (default 8x1, Yang Sec. 3.1) by block L2 norm: round(s * blocks) of
    each matrix (scope 'layer', the paper's uniform sparsity; weight-level sparsity then equals the
    block-level one exactly) or of all matrices together (scope 'global'). (Pruning within a mask
    that keeps everything.)"""
    everything = {name: torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
                  for name, weight in weights.items()}
    return _prune_blocks_within(weights, everything, sparsity, block, scope)


def _random_scores(name: str, shape, seed: int) -> torch.Tensor:
    """Uniform scores from a generator seeded by (seed, name), so a matrix's random mask does not
    depend on what else is selected."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.rand(tuple(shape), generator=generator)


def random_masks(shapes: Mapping[str, torch.Size], sparsity: float, seed: int = 0) -> MaskSet:
    """Prunes round(s * n) uniformly random weights of each matrix."""
    masks = {}
    for name, shape in shapes.items():
        scores = _random_scores(name, shape, seed)
        masks.update(prune_smallest({name: scores}, pruned_count(sparsity, scores.numel())))
    return masks


ALREADY_PRUNED = -1.0
"""The score `prune_within` gives what the earlier mask pruned: below every magnitude, norm and
uniform draw, so it is pruned first and stays pruned."""


def _prune_scope(scores: Mapping[str, torch.Tensor], sparsity: float, where: str) -> MaskSet:
    """prune_smallest at `sparsity` of the scope's units, refusing a scope already sparser."""
    total = sum(score.numel() for score in scores.values())
    already = sum(int(torch.count_nonzero(score == ALREADY_PRUNED)) for score in scores.values())
    wanted = pruned_count(sparsity, total)
    if already > wanted:
        raise ValueError(f"{where}: the mask already prunes {already / total:.4g} of it, more than sparsity "
                         f"{sparsity:g}; iterative pruning only removes more")
    return prune_smallest(scores, wanted)


def prune_within(weights: Mapping[str, torch.Tensor], kept: MaskSet, method: str, sparsity: float,
                 block: Tuple[int, int] = (8, 1), seed: int = 0) -> MaskSet:
    """Masks at `sparsity` that keep a subset of `kept`: one pruning event of iterative magnitude
    pruning (Yang et al. 2023 Sec. 3.1, "prune p% of the remaining weights"). What `kept` prunes
    stays pruned and counts towards the sparsity; the rest is taken from the weights it keeps by
    the method's criterion over the method's scope (global-l1: all matrices together; layer-l1,
    block-l2 and random: each matrix; global-block-l2: the blocks of all matrices together).
    ValueError when `kept` does not cover exactly these matrices, already prunes more than
    `sparsity` in a scope, or (block criteria) cuts through blocks."""
    if set(kept) != set(weights):
        odd = sorted(set(kept) ^ set(weights))[0]
        side = "the mask" if odd in kept else "the weights"
        raise ValueError(f"{odd}: only {side} hold it; the mask to prune within must cover exactly the selected "
                         "matrices")
    for name, weight in weights.items():
        if tuple(kept[name].shape) != tuple(weight.shape):
            raise ValueError(f"{name}: mask shape {tuple(kept[name].shape)} != weight shape {tuple(weight.shape)}")
    if method in BLOCK_METHODS:
        return _prune_blocks_within(weights, kept, sparsity, block, BLOCK_METHODS[method])
    if method == "global-l1":
        scores = {name: torch.where(kept[name], weight.detach().abs().to(_score_dtype([weight])),
                                    ALREADY_PRUNED) for name, weight in weights.items()}
        return _prune_scope(scores, sparsity, "the selected matrices")
    if method not in METHODS:
        raise ValueError(f"method: unknown pruning method {method!r} (known: {', '.join(METHODS)})")
    masks = {}
    for name, weight in weights.items():
        values = _random_scores(name, weight.shape, seed) if method == "random" else weight.detach().abs()
        masks.update(_prune_scope({name: torch.where(kept[name], values.to(_score_dtype([weight])), ALREADY_PRUNED)},
                                  sparsity, name))
    return masks


def _prune_blocks_within(weights, kept: MaskSet, sparsity: float, block: Tuple[int, int], scope: str) -> MaskSet:
    inputs, rows = block
    scores = {}
    for name, weight in weights.items():
        try:
            norms = block_norms(weight, block)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        grid = kept[name].reshape(norms.shape[0], rows, norms.shape[1], inputs)
        whole = grid.all(dim=3).all(dim=1)
        if not torch.equal(whole, grid.any(dim=3).any(dim=1)):
            raise ValueError(f"{name}: the mask keeps parts of some {inputs}x{rows} blocks; block pruning prunes "
                             "within a mask made of whole blocks (one that a block criterion wrote)")
        scores[name] = torch.where(whole, norms, ALREADY_PRUNED)
    if scope == "global":
        kept_blocks = _prune_scope(scores, sparsity, "the selected matrices")
    else:
        kept_blocks = {name: _prune_scope({name: score}, sparsity, name)[name] for name, score in scores.items()}
    return {name: blocks.repeat_interleave(rows, dim=0).repeat_interleave(inputs, dim=1)
            for name, blocks in kept_blocks.items()}


def compute_masks(
    weights: Mapping[str, torch.Tensor],
    method: str,
    sparsity: float,
    block: Tuple[int, int] = (8, 1),
    seed: int = 0,
) -> MaskSet:
    """Dispatches to the criterion named by `method` (one of METHODS)."""
    if method == "global-l1":
        return global_l1_masks(weights, sparsity)
    if method == "layer-l1":
        return layer_l1_masks(weights, sparsity)
    if method in BLOCK_METHODS:
        return block_l2_masks(weights, sparsity, block, BLOCK_METHODS[method])
    if method == "random":
        return random_masks({name: w.shape for name, w in weights.items()}, sparsity, seed)
    raise ValueError(f"method: unknown pruning method {method!r} (known: {', '.join(METHODS)})")
