"""Pruning a fine-tuned fairseq checkpoint into a mask file: what `fairseq-subnets prune` and the
experiment grid both run."""
import os

from ...atomic import cannot_write_message, check_writable
from ...core.maskfile import checkpoint_fingerprint, load_mask_file, save_mask_file
from ...core.parametrize import bake_state_dict, masks_from_state_dict
from ...core.pruning import BLOCK_METHODS, SCOPES, compute_masks, parse_block, prune_within, pruned_count
from ...core.stats import sparsity_by
from ...core.targets import TargetSelection, select_weights
from ..formats.bundles import expand_bundle_masks
from ..formats.checkpoints import CheckpointLoadError, load_fairseq_checkpoint



class PruneError(ValueError):
    """A checkpoint could not be pruned; the message names the file or the parameter."""


def checkpoint_model_state(path):
    """The model state dict of a fairseq checkpoint (read with the safe unpickler)."""
    try:
        return load_fairseq_checkpoint(path)["model"]
    except CheckpointLoadError as error:
        raise PruneError(str(error)) from None


def prune_checkpoint(checkpoint, out, method, sparsity, targets="all", layers="all", block="8x1", seed=0,
                     within=None):
    """Prunes the selected encoder weights of `checkpoint` (masks it holds baked in first) and
    writes the mask file `out` atomically; returns the masks. With `within` (a mask file over the
    same matrices) it prunes further: the new mask keeps a subset of what that one keeps, as an
    iterative pruning step after training under it. Parameters, the output location and the mask
    file are checked before the checkpoint is read."""
    try:
        selection = TargetSelection.parse(targets, layers)
        block = parse_block(block)
        pruned_count(sparsity, 0)
        check_writable(out)
        earlier = load_mask_file(within) if within else None
    except OSError as error:
        raise PruneError(cannot_write_message(out, error)) from None
    except ValueError as error:  # MaskFileError names the file
        raise PruneError(str(error)) from None
    state = checkpoint_model_state(checkpoint)
    try:
        weights = select_weights(bake_state_dict(state), selection)
        if earlier is None:
            masks = compute_masks(weights, method, sparsity, block=block, seed=seed)
        else:
            masks = prune_within(weights, earlier.masks, method, sparsity, block=block, seed=seed)
    except ValueError as error:
        raise PruneError(f"{checkpoint}: {error}" if earlier is None else
                         f"{checkpoint} within {within}: {error}{_selection_hint(earlier, selection)}") from None
    metadata = {
        "method": method, "sparsity": sparsity, "scope": SCOPES[method],
        "block": f"{block[0]}x{block[1]}" if method in BLOCK_METHODS else "", "seed": seed if method == "random" else "",
        "targets": selection.targets_text(), "layers": selection.layers_text(),
        "source": os.path.basename(checkpoint), "source_fingerprint": checkpoint_fingerprint(checkpoint),
        "within": os.path.basename(within) if within else "",
    }
    try:
        save_mask_file(out, masks, metadata)
    except OSError as error:
        raise PruneError(cannot_write_message(out, error)) from None
    return masks


def _selection_hint(earlier, selection) -> str:
    """Where the earlier mask was pruned over other matrices: the options that select its own."""
    targets, layers = earlier.metadata.get("targets"), earlier.metadata.get("layers")
    if targets and layers and (targets, layers) != (selection.targets_text(), selection.layers_text()):
        return f" (it was pruned with --targets {targets} --layers {layers})"
    return ""


def extract_checkpoint_masks(checkpoint, out, language=None):
    """Writes the masks a checkpoint holds (learned scores binarised, fixed masks, `language`'s
    per-language masks; all masks of a weight combined) as the mask file `out`, atomically, so the
    mask tools (stats, iou, similarity, correlate) and `+model.mask_path` take them; returns them."""
    try:
        check_writable(out)
    except OSError as error:
        raise PruneError(cannot_write_message(out, error)) from None
    state = checkpoint_model_state(checkpoint)
    try:
        masks = masks_from_state_dict(expand_bundle_masks(state), language=language)
    except ValueError as error:  # TransformError, BundleError (a damaged embedded mask)
        raise PruneError(f"{checkpoint}: {error}") from None
    if not masks:
        raise PruneError(f"{checkpoint}: holds no masks (no learned scores, fixed or per-language masks)")
    metadata = {"method": "extracted", "sparsity": sparsity_by(masks)["total"], "language": language or "",
                "source": os.path.basename(checkpoint), "source_fingerprint": checkpoint_fingerprint(checkpoint)}
    try:
        save_mask_file(out, masks, metadata)
    except OSError as error:
        raise PruneError(cannot_write_message(out, error)) from None
    return masks
