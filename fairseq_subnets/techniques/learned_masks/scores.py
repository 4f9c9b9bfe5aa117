"""Initial scores for learned masks (S3-Router, Fu et al. 2022), as pure functions of a weight.

The mask keeps the largest scores, so what matters at step 0 is the scores' *order* (it decides the
first mask) and their *scale* (it decides how far one optimizer step moves them relative to each
other):

- `ri`: random, uniform in +-1/sqrt(fan_in) (Kaiming-uniform as `nn.Linear` draws its weights):
  a random first mask, a weight-like scale.
- `wmi`: |W|, so the first mask is the magnitude mask of the pretrained weights (per matrix, or
  global L1 over the selected matrices with the global scope); the scale is that of the weights.
- `ori` (the default): the `ri` values, permuted so that their order equals the order of |W|
  within the matrix. The first mask is WMI's and the scale RI's, with evenly spread values.

Random draws come from torch's default generator (or the one passed), which fairseq seeds before
it builds the model, so every rank of a distributed run starts from the same scores.
"""
import math
from typing import Optional

import torch

SCORE_INITS = ("ori", "wmi", "ri")


def random_scores(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """RI: uniform in +-1/sqrt(fan_in), fan_in being the weight's second dimension."""
    fan_in = weight.shape[1] if weight.dim() > 1 else weight.numel()
    bound = 1.0 / math.sqrt(fan_in)
    uniform = torch.rand(weight.shape, generator=generator, dtype=torch.float32)
    return (uniform * 2 - 1).mul_(bound).to(weight.device)


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """WMI: |W| in float32."""
    return weight.detach().abs().float()


def ordered_random_scores(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ORI: RI's values sorted into the order of |W|; equal magnitudes take ascending values in
    position order, so that the first mask equals WMI's under pruning's tie rule (earlier first)."""
    values = torch.sort(random_scores(weight, generator).reshape(-1)).values
    order = torch.argsort(weight.detach().abs().reshape(-1).float(), stable=True)
    scores = torch.empty_like(values)
    scores[order] = values
    return scores.view(weight.shape)


def initial_scores(weight: torch.Tensor, init: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The scores `init` (one of SCORE_INITS) gives this weight."""
    if init == "ri":
        return random_scores(weight, generator)
    if init == "wmi":
        return magnitude_scores(weight)
    if init == "ori":
        return ordered_random_scores(weight, generator)
    raise ValueError(f"score init {init!r}: choose one of {', '.join(SCORE_INITS)}")
