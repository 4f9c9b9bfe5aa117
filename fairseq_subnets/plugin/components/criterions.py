"""`subnets_ctc`: fairseq's CTC loss plus the regularisation terms that methods contribute.

Any module of the model (a weight transform, an adapter) may contribute named terms (see
`core.transforms.regularisation_terms`): group lasso, S2-LoRA's L1, AdaLoRA's orthogonality. In
training the criterion adds weight x term for each, scaled by the batch's sample size: fairseq
divides gradients by the summed sample size, so the term's gradient is then exactly weight x its
gradient, also under DDP (every rank adds its share) and gradient accumulation. Each term is
logged on its own (`regulariser_<name>`, the unweighted value); the logged `loss` stays the CTC
loss, so runs with and without regularisers compare directly.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.ctc import CtcCriterion, CtcCriterionConfig

from ...component_names import PLUGIN_CTC_CRITERION
from ...core.transforms import regularisation_terms
from .errors import PluginInputError

LOG_PREFIX = "regulariser_"
COUNT_KEY = "regulariser_batches"


class RegulariserConfigError(PluginInputError):
    """`criterion.regulariser_weights` is malformed or names a term no module contributes."""


def parse_regulariser_weights(text: Optional[str]) -> Dict[str, float]:
    """'name:weight,name:weight' -> {name: weight}; the message names the bad entry."""
    weights: Dict[str, float] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        name, colon, value = entry.partition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not colon or not name.strip() or not weight >= 0:
            raise RegulariserConfigError(
                f"criterion.regulariser_weights: {entry.strip()!r} is not name:weight with a weight >= 0"
            )
        weights[name.strip()] = weight
    return weights


@dataclass
class SubnetsCtcCriterionConfig(CtcCriterionConfig):
    regulariser_weights: Optional[str] = field(
        default=None,
        metadata={"help": "weights of the model's regularisation terms as name:weight,... (e.g. "
                  "group_lasso:1e-4); an unnamed term has weight 1 (its method's own config scales it); "
                  "weight 0 switches a term off, and it is then not computed"},
    )


@register_criterion(PLUGIN_CTC_CRITERION, dataclass=SubnetsCtcCriterionConfig)
class SubnetsCtcCriterion(CtcCriterion):
    """Stock CTC (every `ctc` key works) plus the model's regularisation terms in training."""

    def __init__(self, cfg: SubnetsCtcCriterionConfig, task):
        super().__init__(cfg, task)
        self.regulariser_weights = parse_regulariser_weights(cfg.regulariser_weights)
        self.checked_term_names = False

    def weight_of(self, name: str) -> float:
        return self.regulariser_weights.get(name, 1.0)

    def forward(self, model, sample, reduce=True, **kwargs):
        loss, sample_size, logging_output = super().forward(model, sample, reduce=reduce, **kwargs)
        if model.training:
            if not self.checked_term_names:
                self.check_term_names(model)
            terms = regularisation_terms(model, wanted=lambda name: self.weight_of(name) != 0)
            for name, value in terms.items():
                loss = loss + self.weight_of(name) * sample_size * value
                logging_output[LOG_PREFIX + name] = float(value.detach())
            if terms:
                logging_output[COUNT_KEY] = 1
        return loss, sample_size, logging_output

    def check_term_names(self, model):
        """A configured weight for a term no module contributes is a typo: stop on the first batch."""
        offered = {name for module in model.modules()
                   for name in getattr(module, "regularisation_term_names", lambda: ())()}
        unknown = sorted(set(self.regulariser_weights) - offered)
        if unknown:
            raise RegulariserConfigError(
                f"criterion.regulariser_weights names {', '.join(unknown)}, which no module of the model "
                f"contributes (contributed: {', '.join(sorted(offered)) or 'none'})"
            )
        self.checked_term_names = True

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        batches = sum(log.get(COUNT_KEY, 0) for log in logging_outputs)
        names = sorted({key for log in logging_outputs for key in log
                        if key.startswith(LOG_PREFIX) and key != COUNT_KEY})
        for key in names:
            metrics.log_scalar(key, sum(log.get(key, 0.0) for log in logging_outputs) / max(batches, 1),
                               batches, round=6)
