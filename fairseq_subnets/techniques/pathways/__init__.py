"""Pathways (ASR Pathways, Yang et al. 2023 Sec. 3.2): per-language masks on shared encoder
weights, one mask file per language of the multilingual task.

`model.language_mask_files=[LANGUAGE:PATH, ...]` puts every language's mask on the same weights
(`LanguageMasks`, layer.py); each batch trains and decodes under its language's mask (the batch's
language is selected by the language_heads technique). An optimizer step on a language's batch
must leave the shared weights outside that language's mask bit-identical, which the task
guarantees through this technique's `held_through_step` (updates.py).
"""
from dataclasses import dataclass, field
from typing import List, Optional

from ...core.transforms import stacks
from ...errors import PluginInputError
from ..extension import W2V_PREFIX, Technique
from ..language_entries import parse_language_entries
from ..mask_files import fitting_masks
from .layer import LanguageMasks, apply_language_masks
from .updates import outside_active_language_masks


@dataclass
class PathwaysConfig:
    language_mask_files: Optional[List[str]] = field(
        default=None,
        metadata={"help": "per-language masks on shared encoder weights, one mask file per language of the "
                  "subnets_multilingual_finetuning task, as [LANGUAGE:PATH, ...]; each batch trains and decodes "
                  "under its language's mask. Every file must mask the same weights."},
    )


def language_masks(cfg, encoder_shapes, languages):
    """{language: masks} of `model.language_mask_files`, each fitted to the encoder: every one of
    the task's `languages` needs one, since each batch selects its language's mask, and all mask
    the same weights."""
    files = parse_language_entries(cfg.language_mask_files, ":", "model.language_mask_files", "LANGUAGE:PATH")
    if not languages:
        raise PluginInputError("model.language_mask_files needs task._name=subnets_multilingual_finetuning, "
                               "which tells the model each batch's language")
    if sorted(files) != sorted(languages):
        raise PluginInputError(f"model.language_mask_files has masks for {', '.join(files)}; the task trains "
                               f"{', '.join(languages)}: give exactly one mask file per language")
    masks = {language: fitting_masks(encoder_shapes, path, targets=None) for language, path in files.items()}
    first_language, first_path = next(iter(files.items()))
    for language, path in files.items():
        if masks[language].keys() != masks[first_language].keys():
            raise PluginInputError(f"model.language_mask_files: {path} ({language}) masks other weights than "
                                   f"{first_path} ({first_language}); every language must mask the same weights")
    return masks


class Pathways(Technique):
    name = "pathways"
    config = PathwaysConfig
    training_only_keys = ("language_mask_files",)

    @classmethod
    def enabling_key(cls, cfg, task=None):
        return "language_mask_files" if cfg.get("language_mask_files") else None

    @classmethod
    def check_files(cls, cfg, encoder_shapes, task=None):
        language_masks(cfg, encoder_shapes, cfg.get("languages") or getattr(task, "languages", None))

    def add_to_model(self, model, cfg):
        apply_language_masks(model, language_masks(cfg, model.encoder_weight_shapes(), model.languages),
                             prefix=W2V_PREFIX)

    def held_through_step(self, model):
        return outside_active_language_masks(model)

    def writes_parameters_after_steps(self, model):
        return any(isinstance(transform, LanguageMasks) for _, _, stack in stacks(model)
                   for _, _, transform in stack.transforms())


TECHNIQUE = Pathways
