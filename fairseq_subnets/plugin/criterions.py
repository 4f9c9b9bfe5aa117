"""`subnets_ctc`: fairseq's CTC loss, the place where subnetwork regularisers are added."""
from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.ctc import CtcCriterion, CtcCriterionConfig


@dataclass
class SubnetsCtcCriterionConfig(CtcCriterionConfig):
    pass


@register_criterion("subnets_ctc", dataclass=SubnetsCtcCriterionConfig)
class SubnetsCtcCriterion(CtcCriterion):
    """Stock CTC (every `ctc` key works); regularisers of later methods hook in here."""
