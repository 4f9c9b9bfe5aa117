"""The pathways' weight-transform kind (ASR Pathways, Yang et al. 2023): `language_masks`, one mask
per language on a shared weight, the active one chosen per batch (`core.transforms.select_language`,
which the language-heads technique calls), and adding such masks to a model. Pure torch:
importing this module registers the kind, which rebuilding or baking a state dict holding it
needs."""
from typing import Mapping, Optional

import torch
from torch import nn

from ...core.parametrize import DEFAULT_NAME
from ...core.transforms import (
    MaskTransform, TransformError, add_transform, cached_multiplier, module_of, register_transform_kind,
)


@register_transform_kind
class LanguageMasks(MaskTransform):
    """Several named masks on one shared weight (per-language pathways, per-language S3-Router
    masks); the active one is chosen per batch with `select_language`. Each language's mask is a
    bool buffer named by the language, so checkpoints hold every language; switching converts one
    bool mask to the weight's dtype and costs nothing when the language does not change."""

    kind = "language_masks"

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        super().__init__()
        if not masks:
            raise TransformError("language_masks needs at least one language")
        for language, mask in masks.items():
            _check_language_name(language)
            try:
                self.register_buffer(language, mask.detach().to(torch.bool).clone())
            except KeyError:
                raise TransformError(f"language name {language!r} clashes with a module attribute") from None
        self.languages = tuple(masks)
        self.shape = tuple(next(iter(masks.values())).shape)
        self.active: Optional[str] = None
        self._multiplier: Optional[torch.Tensor] = None

    def select(self, language: str) -> None:
        if language not in self.languages:
            raise TransformError(f"no mask for language {language!r} (masks: {', '.join(self.languages)})")
        if language != self.active:
            self.active = language
            self._multiplier = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            raise TransformError(f"per-language masks ({', '.join(self.languages)}) but no language selected")
        return weight * cached_multiplier(self, getattr(self, self.active), weight)

    def kept(self) -> torch.Tensor:
        if self.active is None:
            raise TransformError(f"per-language masks ({', '.join(self.languages)}) but no language selected")
        return getattr(self, self.active).clone()

    def weight_shape(self):
        return self.shape

    def named_kept(self):
        return {language: getattr(self, language).clone() for language in self.languages}

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._multiplier = None

    def eval_token(self):
        return super().eval_token() + (self.active,)

    def options(self):
        return {"languages": list(self.languages)}

    @classmethod
    def placeholder(cls, shape, options):
        return cls({language: torch.ones(shape, dtype=torch.bool) for language in options["languages"]})

    @classmethod
    def from_state(cls, tensors, shape):
        return cls(dict(tensors))


def _check_language_name(language: str) -> None:
    if not language or "." in language or not language.replace("-", "").replace("_", "").isalnum():
        raise TransformError(f"language name {language!r}: use letters, digits, '-' and '_' only")


def apply_language_masks(root: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]], prefix: str = "",
                         name: str = DEFAULT_NAME) -> None:
    """Adds per-language masks: `masks[language][weight name]`; every language must mask the same
    weights. Choose the active language with `core.transforms.select_language`."""
    languages = list(masks)
    weight_names = set(next(iter(masks.values()), {}))
    for language in languages:
        if set(masks[language]) != weight_names:
            raise TransformError(f"language {language!r} masks other weights than {languages[0]!r}")
    for weight_name in sorted(weight_names):
        module = module_of(root, weight_name, prefix)
        add_transform(module, name, LanguageMasks({language: masks[language][weight_name] for language in languages}))
