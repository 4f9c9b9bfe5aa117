"""Putting AdaLoRA on a model, and its rank budget: the schedule and the allocator step that the
training loop calls after each optimizer step (rules: `AdaLoraConfig`)."""
from typing import Dict, List, Tuple

import torch
from torch import nn

from ....core.transforms import add_transform
from ..base import target_modules, tuner_transforms
from .config import AdaLoraConfig
from .layer import SvdDelta


def inject_adalora(root: nn.Module, config: AdaLoraConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Adds an SVD-form delta of rank init_r to every target; the orthogonality weight is shared
    out so the members' terms sum to the mean over all 2N factors. Returns the weight names."""
    targets = target_modules(root, config, prefix)
    for _, module in targets:
        add_transform(module, name, SvdDelta(tuple(module.weight.shape), config.init_r, config.alpha,
                                             config.orthogonality_weight / (2 * len(targets))))
    return [weight for weight, _ in targets]


def svd_deltas(root: nn.Module, prefix: str = "") -> Dict[str, SvdDelta]:
    return {weight: t for weight, t in tuner_transforms(root, prefix) if isinstance(t, SvdDelta)}


def budget_at(config: AdaLoraConfig, update: int, matrices: int) -> Tuple[int, bool]:
    """(total rank budget, whether to mask at this update) for `matrices` adapted matrices."""
    initial, target = config.init_r * matrices, config.target_r * matrices
    if update <= config.warmup_updates:
        return initial, False
    if update > config.total_updates - config.final_updates:
        return target, True
    progress = (update - config.warmup_updates) / (config.total_updates - config.final_updates - config.warmup_updates)
    return int((initial - target) * (1 - progress) ** 3 + target), update % config.interval == 0


def mask_to_budget(deltas: Dict[str, SvdDelta], budget: int) -> Dict[str, int]:
    """Keeps the `budget` best-scoring triplets over all matrices (ties at the threshold are
    dropped together); returns each matrix's kept rank."""
    scores = [delta.triplet_scores() for delta in deltas.values()]
    dropped = sum(score.numel() for score in scores) - budget
    if dropped > 0:
        threshold = torch.kthvalue(torch.cat(scores), dropped).values
        for delta, score in zip(deltas.values(), scores):
            delta.keep(score > threshold)
    return {weight: delta.rank() for weight, delta in deltas.items()}


def allocate(config: AdaLoraConfig, deltas: Dict[str, SvdDelta], update: int) -> int:
    """One allocator step after optimizer step `update` (gradients still present): smooths the
    importance (before the final phase), and masks when the schedule says so. Returns the budget."""
    if update < config.total_updates - config.final_updates:
        for delta in deltas.values():
            delta.update_importance(config.beta1, config.beta2)
    budget, mask_now = budget_at(config, update, len(deltas))
    if mask_now:
        mask_to_budget(deltas, budget)
    return budget


def after_optimizer_step(config: AdaLoraConfig, root: nn.Module, prefix: str, update: int) -> Dict[str, float]:
    """The allocator step the training loop runs after optimizer step `update`; the budget is
    logged."""
    return {"adalora_budget": allocate(config, svd_deltas(root, prefix), update)}
