"""Pruning criteria: exact counts, agreement with torch.nn.utils.prune, ties, blocks, nesting."""
import pytest
import torch
from torch.nn.utils import prune

from fairseq_subnets.core import pruning
from fairseq_subnets.core.pruning import (
    block_l2_masks,
    compute_masks,
    global_l1_masks,
    layer_l1_masks,
    parse_block,
    prune_smallest,
    prune_within,
    pruned_count,
    random_masks,
)


def random_weights(shapes, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(shape, generator=generator).to(dtype) for i, shape in enumerate(shapes)}


def kept(masks):
    return sum(int(mask.sum()) for mask in masks.values())


def sorted_reference(scores, n_prune, score=lambda t: t):
    """The order rule spelled out: stable sort of all scores in mapping order, prune the first n."""
    flat = torch.cat([score(t.reshape(-1).double()) for t in scores.values()])
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:n_prune]] = False
    masks, start = {}, 0
    for name, tensor in scores.items():
        masks[name] = keep[start : start + tensor.numel()].view(tensor.shape)
        start += tensor.numel()
    return masks


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("sparsity,total,expected", [
    (0.0, 10, 0), (1.0, 10, 10), (0.5, 5, 2), (0.5, 7, 4), (0.25, 10, 2), (0.35, 10, 4),
    (0.1, 30, 3), (0.9, 301989888, 271790899), (1 / 3, 3, 1),
])
def test_pruned_count_is_round_half_even_like_torch(sparsity, total, expected):
    assert pruned_count(sparsity, total) == expected == prune._compute_nparams_toprune(sparsity, total)


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, True])
def test_pruned_count_rejects_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        pruned_count(sparsity, 10)


SHAPES = [[(7, 5), (3, 11), (13,)], [(1, 1)], [(64, 32), (32, 64)]]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.05, 0.3, 0.5, 0.77, 0.9, 0.999, 1.0])
def test_global_and_layer_l1_keep_exact_counts(shapes, sparsity):
    weights = random_weights(shapes)
    total = sum(w.numel() for w in weights.values())
    assert kept(global_l1_masks(weights, sparsity)) == total - pruned_count(sparsity, total)
    per_matrix = layer_l1_masks(weights, sparsity)
    for name, weight in weights.items():
        assert int(per_matrix[name].sum()) == weight.numel() - pruned_count(sparsity, weight.numel())


def torch_masks(weights, sparsity, globally):
    holders = {}
    for name, weight in weights.items():
        holders[name] = torch.nn.Module()
        holders[name].weight = torch.nn.Parameter(weight.clone())
    if globally:
        prune.global_unstructured([(h, "weight") for h in holders.values()], prune.L1Unstructured, amount=sparsity)
    else:
        for holder in holders.values():
            prune.l1_unstructured(holder, "weight", amount=sparsity)
    return {name: holder.weight_mask.bool() for name, holder in holders.items()}


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_l1_equals_torch_global_unstructured(sparsity, dtype):
    weights = random_weights([(48, 32), (32, 48), (96, 32), (32, 96)], seed=1, dtype=dtype)
    assert_same(global_l1_masks(weights, sparsity), torch_masks(weights, sparsity, globally=True))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.33])
def test_layer_l1_equals_torch_l1_unstructured_per_matrix(sparsity):
    weights = random_weights([(48, 32), (32, 48), (17, 3)], seed=2)
    assert_same(layer_l1_masks(weights, sparsity), torch_masks(weights, sparsity, globally=False))


def test_ties_prune_the_earlier_weight_first():
    weights = {"a": torch.tensor([[1.0, -2.0], [2.0, 3.0]]), "b": torch.tensor([2.0, -1.0, 5.0])}
    masks = global_l1_masks(weights, 4 / 7)  # prunes 4: both 1s, then the first two of the three 2s
    assert masks["a"].tolist() == [[False, False], [False, True]]
    assert masks["b"].tolist() == [True, False, True]


@pytest.fixture
def small_windows(monkeypatch):
    """Makes the sampled-window path, the narrowing path and odd chunk ends run on small data."""
    monkeypatch.setattr(pruning, "WINDOW_LIMIT", 1000)
    monkeypatch.setattr(pruning, "SAMPLE_MIN", 256)
    monkeypatch.setattr(pruning, "SAMPLE_SIZE", 512)
    monkeypatch.setattr(pruning, "CHUNK", 4096)


HARD_SCORES = {
    "many ties": lambda g: {"a": torch.randint(-3, 4, (300, 40), generator=g).float(),
                            "b": torch.randint(-3, 4, (997,), generator=g).float()},
    "half zeros": lambda g: {"a": torch.cat([torch.zeros(9000), torch.randn(9000, generator=g)]),
                             "b": torch.randn(3001, generator=g).half()},
    "constant": lambda g: {"a": torch.full((5000,), 0.5), "b": torch.full((77,), 0.5)},
    "sorted": lambda g: {"a": torch.sort(torch.randn(20000, generator=g)).values},
    "infinities": lambda g: {"a": torch.tensor([float("inf")] * 3000 + [1.0] * 10 + [-float("inf")] * 5)},
    "float64": lambda g: {"a": torch.randn(20000, generator=g).double()},
    "tiny dynamic range": lambda g: {"a": 1.0 + torch.randint(0, 4, (20000,), generator=g).float() * 2 ** -23},
}


@pytest.mark.parametrize("case", sorted(HARD_SCORES))
@pytest.mark.parametrize("absolute", [False, True])
def test_selection_matches_a_stable_sort_on_hard_distributions(case, absolute, small_windows):
    scores = HARD_SCORES[case](torch.Generator().manual_seed(3))
    total = sum(t.numel() for t in scores.values())
    for n_prune in sorted({0, 1, 2, total // 3, total // 2, 9001, total - 1, total} & set(range(total + 1))):
        got = prune_smallest(scores, n_prune, pruning.absolute if absolute else None)
        assert_same(got, sorted_reference(scores, n_prune, torch.abs if absolute else (lambda t: t)))


def test_nan_weights_fail_naming_the_matrix(small_windows):
    weights = {"good": torch.randn(5000), "bad": torch.tensor([1.0, float("nan")] * 2000)}
    with pytest.raises(ValueError, match="bad: holds NaN"):
        global_l1_masks(weights, 0.5)


@pytest.mark.parametrize("method", ["global-l1", "layer-l1", "block-l2", "global-block-l2", "random"])
def test_masks_for_increasing_sparsity_are_nested(method):
    weights = random_weights([(16, 32), (32, 16)], seed=4)
    previous = None
    for sparsity in [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]:
        masks = compute_masks(weights, method, sparsity, block=(8, 1), seed=5)
        if previous is not None:
            assert all(bool((masks[n] <= previous[n]).all()) for n in masks), sparsity
        previous = masks


def test_block_masks_are_constant_inside_blocks_with_exact_block_counts():
    weights = random_weights([(12, 32), (6, 16)], seed=6)
    for block in [(8, 1), (4, 2), (2, 3)]:
        masks = block_l2_masks(weights, 0.6, block)
        for name, weight in weights.items():
            inputs, rows = block
            grid = masks[name].reshape(weight.shape[0] // rows, rows, weight.shape[1] // inputs, inputs)
            assert bool((grid == grid[:, :1, :, :1]).all())
            blocks = weight.numel() // (inputs * rows)
            assert int(grid[:, 0, :, 0].sum()) == blocks - pruned_count(0.6, blocks)


def test_block_masks_keep_the_blocks_with_the_largest_l2_norm():
    weight = torch.tensor([[3.0, 0, 0, 0, 0.1, 0.1, 0.1, 0.1], [1.0, 1, 1, 1, 0, 0, 0, 0]])
    masks = block_l2_masks({"w": weight}, 0.5, (4, 1))  # norms 3, 0.2, 2, 0
    assert masks["w"].tolist() == [[True] * 4 + [False] * 4, [True] * 4 + [False] * 4]


def test_global_block_masks_rank_the_blocks_of_all_matrices_together():
    """One matrix of small weights loses more of its blocks than one of large weights; exactly
    round(s x all blocks) go, the smallest norms first (the order rule spelled out on the norms)."""
    weights = {"small": 0.1 * torch.randn(8, 32, generator=torch.Generator().manual_seed(1)),
               "large": torch.randn(16, 16, generator=torch.Generator().manual_seed(2))}
    masks = compute_masks(weights, "global-block-l2", 0.5, block=(8, 1))
    norms = {name: pruning.block_norms(weight, (8, 1)) for name, weight in weights.items()}
    expected = sorted_reference(norms, pruned_count(0.5, 32 + 32))
    for name, mask in masks.items():
        assert torch.equal(mask, expected[name].repeat_interleave(8, dim=1)), name
    assert int((~masks["small"]).sum()) > int((~masks["large"]).sum())


def test_block_that_does_not_tile_the_matrix_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"odd: block 8x1 does not tile a weight of shape \(4, 12\)"):
        block_l2_masks({"odd": torch.randn(4, 12)}, 0.5, (8, 1))


@pytest.mark.parametrize("text,expected", [("8x1", (8, 1)), ("4X2", (4, 2))])
def test_parse_block(text, expected):
    assert parse_block(text) == expected


@pytest.mark.parametrize("text", ["8", "0x1", "8x1x1", "ax1"])
def test_parse_block_rejects(text):
    with pytest.raises(ValueError, match="block"):
        parse_block(text)


def test_random_masks_are_seeded_exact_and_independent_of_the_other_matrices():
    shapes = {"a": (10, 20), "b": (30, 7)}
    first, again = random_masks(shapes, 0.4, seed=1), random_masks(shapes, 0.4, seed=1)
    assert_same(first, again)
    assert not torch.equal(first["a"], random_masks(shapes, 0.4, seed=2)["a"])
    assert torch.equal(random_masks({"a": (10, 20)}, 0.4, seed=1)["a"], first["a"])
    assert [int(m.sum()) for m in first.values()] == [200 - 80, 210 - 84]


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown pruning method 'magic'"):
        compute_masks({}, "magic", 0.5)


# ------------------------------------------------------------------- iterative pruning (prune_within)


@pytest.mark.parametrize("globally", [False, True])
def test_pruning_20_percent_of_the_remaining_weights_three_times_equals_torch_prune_applied_three_times(globally):
    """torch.nn.utils.prune applied again prunes `amount` of the weights still unpruned: IMP's event."""
    weights = random_weights([(48, 32), (32, 48), (17, 3)], seed=3)
    holders = {}
    for name, weight in weights.items():
        holders[name] = torch.nn.Module()
        holders[name].weight = torch.nn.Parameter(weight.clone())
    ours = {name: torch.ones_like(weight, dtype=torch.bool) for name, weight in weights.items()}
    total = sum(weight.numel() for weight in weights.values())
    for _ in range(3):
        if globally:
            prune.global_unstructured([(h, "weight") for h in holders.values()], prune.L1Unstructured, amount=0.2)
            pruned = sum(int((~h.weight_mask.bool()).sum()) for h in holders.values())
            ours = prune_within(weights, ours, "global-l1", pruned / total)
        else:
            for holder in holders.values():
                prune.l1_unstructured(holder, "weight", amount=0.2)
            ours = {name: prune_within({name: weights[name]}, {name: ours[name]}, "layer-l1",
                                       int((~holders[name].weight_mask.bool()).sum()) / weights[name].numel())[name]
                    for name in weights}
        assert_same(ours, {name: holder.weight_mask.bool() for name, holder in holders.items()})
    assert kept(ours) == pytest.approx(0.8 ** 3 * total, abs=3)


@pytest.mark.parametrize("method", ["global-l1", "layer-l1", "block-l2", "global-block-l2", "random"])
def test_pruning_within_a_mask_keeps_a_subset_at_the_exact_sparsity(method):
    weights = random_weights([(16, 32), (32, 16)], seed=4)
    earlier = compute_masks(weights, method, 0.3, seed=5)
    zeroed = {name: weight * earlier[name] for name, weight in weights.items()}  # trained under the mask
    later = prune_within(zeroed, earlier, method, 0.55, seed=5)
    assert all(not (later[name] & ~earlier[name]).any() for name in weights)
    if method == "global-l1":
        assert kept(later) == 1024 - pruned_count(0.55, 1024)
    if method == "global-block-l2":
        assert kept(later) == 8 * (128 - pruned_count(0.55, 128))
    units = {"block-l2": 8, "global-l1": 1}.get(method, 1)
    for name, mask in later.items():
        if not method.startswith("global"):
            assert int(mask.sum()) == units * (512 // units - pruned_count(0.55, 512 // units))
    if method == "layer-l1":  # the new pruning takes the smallest magnitudes among the kept weights
        for name, weight in weights.items():
            newly = earlier[name] & ~later[name]
            assert weight[newly].abs().max() <= weight[later[name]].abs().min()


def test_pruning_within_refuses_what_cannot_be_an_iterative_step():
    weights = random_weights([(16, 32), (32, 16)], seed=6)
    earlier = layer_l1_masks(weights, 0.5)
    with pytest.raises(ValueError, match=r"^w0: the mask already prunes 0.5 of it, more than sparsity 0.3"):
        prune_within(weights, earlier, "layer-l1", 0.3)
    with pytest.raises(ValueError, match=r"^w1: only the weights hold it"):
        prune_within(weights, {"w0": earlier["w0"]}, "layer-l1", 0.7)
    with pytest.raises(ValueError, match=r"^w0: the mask keeps parts of some 8x1 blocks"):
        prune_within(weights, earlier, "block-l2", 0.7)
