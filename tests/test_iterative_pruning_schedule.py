"""The iterative pruning schedule, group lasso and the rewind point (techniques/iterative_pruning/schedule.py),
without fairseq: exact sparsities event by event, the group-lasso gradient against autograd of the
formula written out block by block, and rewinding bit for bit."""
import math

import pytest
import torch

from fairseq_subnets.core.pruning import prune_within
from fairseq_subnets.techniques.iterative_pruning.schedule import (
    PruningSchedule, RewindPoint, group_lasso, group_lasso_strength, mean_kept_group_norm, pruning_method,
)


@pytest.mark.parametrize("fraction, target, events", [(0.2, 0.6, 5), (0.5, 0.75, 2), (0.2, 0.36, 2), (0.5, 0.8, 3),
                                                      (0.2, 0.1, 1), (0.2, 1 - 0.8 ** 6, 6)])
def test_the_schedule_keeps_one_minus_p_to_the_n_and_clips_the_last_event_to_the_target(fraction, target, events):
    schedule = PruningSchedule(interval=10, fraction=fraction, target_sparsity=target)
    assert schedule.events == events and schedule.final_update == 10 * events
    for n in range(1, events):
        assert schedule.sparsity_after(n) == 1 - (1 - fraction) ** n
        assert schedule.sparsity_after(n) < target
    assert schedule.sparsity_after(events) == target == schedule.sparsity_after(events + 3)
    assert [u for u in range(0, 10 * events + 25) if schedule.event_at(u)] == [10 * n for n in range(1, events + 1)]
    assert [schedule.event_at(10 * n) for n in range(1, events + 1)] == list(range(1, events + 1))
    assert schedule.events_done(10 * events - 1) == events - 1 and schedule.events_done(10 ** 6) == events


@pytest.mark.parametrize("arguments, message", [
    ((0, 0.2, 0.5), "interval=0: prune every T >= 1"), ((4, 0.0, 0.5), "fraction=0.0: the share"),
    ((4, 1.0, 0.5), "fraction=1.0"), ((4, 0.2, 0.0), "target_sparsity=0.0"), ((4, 0.2, 1.0), "target_sparsity=1.0"),
    ((2.5, 0.2, 0.5), "interval=2.5"),
])
def test_a_bad_schedule_is_refused_naming_the_field(arguments, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        PruningSchedule(*arguments)


@pytest.mark.parametrize("criterion, scope", [("magnitude", "layer"), ("magnitude", "global"), ("block", "layer"),
                                              ("block", "global")])
def test_pruning_event_after_event_keeps_the_scheduled_count_exactly(criterion, scope):
    """The schedule driving prune_within on changing weights, as training does: after event n every
    scope keeps kept_after(n) of its units (weights, or 8x1 blocks), and each mask nests in the one
    before."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"a": (16, 32), "b": (32, 16), "c": (8, 64)}
    schedule = PruningSchedule(interval=5, fraction=0.2, target_sparsity=0.6)
    method = pruning_method(criterion, scope)
    unit = 8 if criterion == "block" else 1
    kept = {name: torch.ones(shape, dtype=torch.bool) for name, shape in shapes.items()}
    for event in range(1, schedule.events + 1):
        weights = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        new = prune_within(weights, kept, method, schedule.sparsity_after(event), block=(8, 1))
        assert all(not (new[name] & ~kept[name]).any() for name in shapes)
        if scope == "global":
            units = sum(math.prod(shape) for shape in shapes.values()) // unit
            assert sum(int(m.sum()) for m in new.values()) == unit * schedule.kept_after(event, units)
        else:
            for name, shape in shapes.items():
                assert int(new[name].sum()) == unit * schedule.kept_after(event, math.prod(shape) // unit), name
        kept = new
    assert sum(int(m.sum()) for m in kept.values()) == pytest.approx(0.4 * 1536, abs=8 * len(shapes))


def test_pruning_method_names_the_core_criterion_and_refuses_unknown_ones():
    assert pruning_method("block", "layer") == "block-l2" and pruning_method("magnitude", "global") == "global-l1"
    with pytest.raises(ValueError, match="criterion 'l0'"):
        pruning_method("l0", "layer")
    with pytest.raises(ValueError, match="scope 'model'"):
        pruning_method("magnitude", "model")


def written_out_group_lasso(weights, strengths, block):
    """Yang Eq. 1 block by block: sum_i lambda_i sum_g sqrt(sum of the squares in block g)."""
    inputs, rows = block
    total = 0.0
    for name, weight in weights.items():
        for row in range(0, weight.shape[0], rows):
            for column in range(0, weight.shape[1], inputs):
                total = total + strengths[name] * weight[row:row + rows, column:column + inputs].pow(2).sum().sqrt()
    return total


@pytest.mark.parametrize("block", [(8, 1), (4, 2)])
def test_the_group_lasso_value_and_gradient_equal_autograd_of_the_formula(block):
    generator = torch.Generator().manual_seed(1)
    weights = {"a": torch.randn(4, 16, generator=generator, dtype=torch.float64),
               "b": torch.randn(6, 8, generator=generator, dtype=torch.float64)}
    weights["a"][:, :8] = 0.0  # all-zero blocks (pruned): their gradient is 0, not NaN
    strengths = {"a": torch.tensor(0.3, dtype=torch.float64), "b": torch.tensor(1.7, dtype=torch.float64)}
    ours = {name: w.clone().requires_grad_() for name, w in weights.items()}
    reference = {name: w.clone().requires_grad_() for name, w in weights.items()}
    value = group_lasso(ours, strengths, block)
    expected = written_out_group_lasso({n: w for n, w in reference.items()},
                                       {n: s.item() for n, s in strengths.items()}, block)
    value.backward()
    torch.autograd.backward(expected)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    for name in weights:
        nonzero = ~torch.isnan(reference[name].grad)
        torch.testing.assert_close(ours[name].grad[nonzero], reference[name].grad[nonzero], rtol=1e-12, atol=1e-12)
    assert torch.equal(ours["a"].grad[:, :8], torch.zeros(4, 8, dtype=torch.float64))
    # d/dW_g of lambda ||W_g|| is lambda W_g / ||W_g||: the closed form too
    b = weights["b"].reshape(6 // block[1], block[1], 8 // block[0], block[0])
    closed = 1.7 * b / torch.linalg.vector_norm(b, dim=(1, 3), keepdim=True)
    torch.testing.assert_close(ours["b"].grad, closed.reshape(6, 8), rtol=1e-12, atol=1e-12)


def test_lambda_is_the_strength_over_the_mean_norm_of_the_kept_blocks():
    weight = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [6.0, 8.0, 9.0, 9.0]])
    kept = torch.tensor([[True, True, True, True], [True, True, False, False], [False, False, True, True]])
    # blocks 2x1: kept parts [3,4] [0,0] [1,0] [-] [-] [9,9]: norms 5, 0, 1, 12.73 (the pruned 6,8 count as 0)
    assert mean_kept_group_norm(weight, kept, (2, 1)) == pytest.approx((5 + 0 + 1 + math.sqrt(162)) / 4)
    assert group_lasso_strength(0.5, 2.0) == 0.25 and group_lasso_strength(0.5, 0.0) == 0.0
    assert group_lasso_strength(0.5, 2.0, "current") == 0.25 and group_lasso_strength(0.5, 2.0, "constant") == 0.5
    with pytest.raises(ValueError, match="lambda rule 'adaptive'"):
        group_lasso_strength(0.5, 2.0, "adaptive")
    assert mean_kept_group_norm(weight, torch.zeros_like(kept), (2, 1)) == 0.0


def test_the_rewind_point_restores_every_parameter_bit_for_bit_and_loads_into_an_empty_one():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    point = RewindPoint()
    assert not point.taken
    point.take(model.named_parameters())
    taken = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    references = {name: p for name, p in model.named_parameters()}
    assert point.rewind(model.named_parameters()) == 4
    assert all(torch.equal(p, taken[name]) and p is references[name] for name, p in model.named_parameters())

    empty = RewindPoint()
    empty.load_state_dict(point.state_dict())
    assert empty.taken and all(torch.equal(empty.values()[n], taken[n]) for n in taken)
    with pytest.raises(ValueError, match=r"^extra\.weight: no value at the rewind point \(it holds 4 parameters\)"):
        empty.rewind([("extra.weight", torch.nn.Parameter(torch.zeros(1)))])
    with pytest.raises(ValueError, match="'__'"):
        RewindPoint().take([("odd__name", torch.zeros(1))])
