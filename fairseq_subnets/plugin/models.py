"""`subnets_wav2vec_ctc`: fairseq's wav2vec2 CTC model, the carrier of masks and adapters.

With no mask configured it is exactly the stock `wav2vec_ctc` model (same parameters, same outputs
from the same checkpoint). With `mask_path` the mask file is applied to the encoder after the
pretrained weights are loaded, through the weight tensors themselves (see core.parametrize), so
fairseq's fused attention path honours it and pruned effective weights stay exactly zero.

The masks are buffers of the model, so every checkpoint carries them: resuming, fairseq-generate
and `fairseq-subnets export` need the checkpoint only, even if the mask file has moved since.
"""
from dataclasses import dataclass, field, replace
from typing import Optional

from fairseq.models import register_model
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

from ..core.maskfile import load_mask_file
from ..core.parametrize import apply_masks, masks_from_module, masks_from_state_dict
from ..core.targets import TargetSelection, num_encoder_layers, relative_weight_names

W2V_PREFIX = "w2v_encoder.w2v_model."
"""Where the wav2vec2 model sits inside the CTC model; mask names are relative to it."""


@dataclass
class SubnetsWav2Vec2CtcConfig(Wav2Vec2CtcConfig):
    mask_path: Optional[str] = field(
        default=None,
        metadata={"help": "mask file (from `fairseq-subnets prune`) fixed on the encoder weights"},
    )
    mask_targets: Optional[str] = field(
        default=None,
        metadata={"help": "apply only these module kinds of the mask file (q,k,v,out,fc1,fc2,attn,ffn,all); "
                  "default: every mask in the file"},
    )
    mask_layers: Optional[str] = field(
        default=None, metadata={"help": "apply only these encoder layers of the mask file (e.g. 0-5); default: all"}
    )


@register_model("subnets_wav2vec_ctc", dataclass=SubnetsWav2Vec2CtcConfig)
class SubnetsWav2VecCtc(Wav2VecCtc):
    @classmethod
    def build_model(cls, cfg, task):
        model = super().build_model(cfg, task)
        if cfg.mask_path:
            model.apply_mask_file(cfg.mask_path, cfg.mask_targets or "all", cfg.mask_layers or "all")
        return model

    def encoder_weight_shapes(self):
        state = self.state_dict()
        return {name: tuple(state[key].shape) for name, key in relative_weight_names(state, W2V_PREFIX).items()}

    def apply_mask_file(self, path, targets="all", layers="all"):
        """Fixes the selected masks of a mask file on the encoder; raw pruned weights are zeroed."""
        mask_file = load_mask_file(path)
        model_shapes = self.encoder_weight_shapes()
        selected = set(TargetSelection.parse(targets, layers).names(num_encoder_layers(model_shapes)))
        chosen = replace(mask_file, masks={n: m for n, m in mask_file.masks.items() if n in selected})
        chosen.check_against({name: shape for name, shape in model_shapes.items() if name in selected})
        apply_masks(self, chosen.masks, prefix=W2V_PREFIX, zero_pruned=True)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Takes the masks a checkpoint holds even when this model was built without them."""
        stored = masks_from_state_dict(state_dict, prefix=W2V_PREFIX)
        present = masks_from_module(self, prefix=W2V_PREFIX)
        absent = {name: mask for name, mask in stored.items() if name not in present}
        if absent:
            apply_masks(self, absent, prefix=W2V_PREFIX)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
