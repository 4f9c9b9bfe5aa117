"""Mask files fitted to the host model's encoder: what fixed masks and per-language masks share.

A mask file is read against the weights the model really has, so a file for a deeper or wider
model is refused with the file and weight named, and no selected mask is dropped unnoticed.
"""
from dataclasses import replace
from typing import Dict, Tuple

import torch

from ..core.maskfile import load_mask_file
from ..core.targets import TargetSelection, num_encoder_layers
from ..errors import PluginInputError


def fitting_masks(model_shapes: Dict[str, Tuple[int, ...]], path: str, targets="all", layers="all",
                  keys=("model.mask_targets", "model.mask_layers")) -> Dict[str, torch.Tensor]:
    """The selected masks of a mask file, checked against the encoder weights of a model
    (`model_shapes`: model-relative name -> shape, as the host's `encoder_weight_shapes` gives them,
    known before the model is built): every selected weight needs a mask, and every selected mask a
    weight, so a file for a deeper model is refused unless `layers` leaves out the layers this model
    lacks. targets=None selects exactly the weights the file masks. `keys` name the two selection
    settings in errors."""
    if targets is None:
        mask_file = load_mask_file(path)
        selected, chosen_masks = set(mask_file.masks), mask_file.masks
    else:
        try:
            selection = TargetSelection.parse(targets, layers, keys=keys)
            selected = set(selection.names(num_encoder_layers(model_shapes)))
        except ValueError as error:  # its message starts with the key
            raise PluginInputError(str(error)) from None
        mask_file = load_mask_file(path)
        chosen_masks = {name: mask for name, mask in mask_file.masks.items() if selection.selects(name)}
    chosen = replace(mask_file, masks=chosen_masks)
    chosen.check_against({name: shape for name, shape in model_shapes.items() if name in selected})
    return chosen.masks
