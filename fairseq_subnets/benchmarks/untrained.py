"""wav2vec2 CTC models of a chosen size with random weights, built from a config alone.

Benchmarks and tests need real fairseq models (the stock convolutional feature extractor, fairseq's
own attention, our `subnets_wav2vec_ctc` or the stock `wav2vec_ctc`) of a given size, but have no
pretraining checkpoint to point `w2v_path` at. fairseq's wav2vec2 encoder also builds from the
pretraining config given in `w2v_args`, which is what these functions write. The benchmarks and
the test factory both build through here, so a test measures the very models a benchmark times.
Where a run must go through stock `fairseq-hydra-train` (which reads `w2v_path`), a random
pretraining checkpoint in the trainer's own format stands in for a downloaded one.
"""
import os
import tempfile
import types
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from fairseq.dataclass.configs import FairseqConfig
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
from omegaconf import OmegaConf

from ..component_names import STOCK_PRETRAINING_TASK
from ..core.maskfile import save_mask_file
from ..techniques.fixed_masks import apply_mask_file
from ..plugin.components.models import SubnetsWav2Vec2CtcConfig, SubnetsWav2VecCtc
from ..plugin.formats.checkpoints import trainer_checkpoint


@dataclass(frozen=True)
class CtcModelSize:
    """The encoder's size and the output layer's width; wav2vec2 BASE is (12, 768, 3072)."""

    layers: int
    width: int
    ffn: int
    heads: Optional[int] = None
    """attention heads; None: width // 64 (at least 1)"""
    vocab: int = 32

    @property
    def attention_heads(self) -> int:
        return self.heads or max(1, self.width // 64)

    def describe(self) -> str:
        return f"{self.layers} layers, width {self.width}, FFN {self.ffn}, {self.attention_heads} heads"


XLSR_ARCHITECTURE = {"extractor_mode": "layer_norm", "conv_bias": True, "layer_norm_first": True, "final_dim": 768}
"""What XLS-R's pretraining config sets beyond the encoder size, against fairseq's wav2vec2
defaults (BASE): a feature extractor with layer norm in every convolution and conv biases,
transformer layers that normalize first, and a 768-wide projection for the contrastive loss. The
convolutions themselves (7 layers of 512 channels, 20 ms frames) are the default ones."""


def narrowed_feature_extractor(channels: int) -> str:
    """fairseq's default feature extractor (XLS-R's: 7 convolutions, 20 ms frames) with `channels`
    channels in every convolution instead of 512, as Wav2Vec2Config's `conv_feature_layers` spells
    it: the same frames at a fraction of the CPU time, where a check runs every mode at a tiny size."""
    return f"[({channels}, 10, 5)] + [({channels}, 3, 2)] * 4 + [({channels}, 2, 2)] * 2"


def wav2vec2_model_config(size: CtcModelSize, **architecture):
    """The pretraining model config (`wav2vec2`) of an encoder of `size`, with `architecture`
    (e.g. XLSR_ARCHITECTURE) replacing fairseq's defaults; a DictConfig."""
    model = OmegaConf.structured(Wav2Vec2Config(
        encoder_layers=size.layers, encoder_embed_dim=size.width,
        encoder_ffn_embed_dim=size.ffn, encoder_attention_heads=size.attention_heads, **architecture,
    ))
    model._name = "wav2vec2"
    return model


def ctc_model_config(size: CtcModelSize, stock: bool = False, architecture: Mapping[str, object] = {}):
    """The model config (`subnets_wav2vec_ctc`, or stock `wav2vec_ctc`) whose wav2vec2 encoder of
    `size` with `architecture` (e.g. XLSR_ARCHITECTURE) is built from `w2v_args`, so `w2v_path` is
    never read; its task is only instantiated, so its data directory need not exist either. A
    DictConfig, as fairseq hands models their config."""
    w2v_args = OmegaConf.create({"task": {"_name": STOCK_PRETRAINING_TASK, "data": "unused", "normalize": False},
                                 "model": wav2vec2_model_config(size, **architecture)})
    config_class = Wav2Vec2CtcConfig if stock else SubnetsWav2Vec2CtcConfig
    return OmegaConf.structured(config_class(w2v_path="unused", w2v_args=w2v_args, data="unused", normalize=False))


def build_untrained_ctc_model(size: CtcModelSize, stock: bool = False, architecture: Mapping[str, object] = {}):
    """A freshly initialised `subnets_wav2vec_ctc` model (stock `Wav2VecCtc` with `stock`) with
    `size.vocab` outputs and `architecture` (see `ctc_model_config`); seed torch first for
    reproducible weights."""
    task = types.SimpleNamespace(target_dictionary=range(size.vocab))
    model_class = Wav2VecCtc if stock else SubnetsWav2VecCtc
    return model_class.build_model(ctc_model_config(size, stock, architecture), task)


def rebuild_with_state(size: CtcModelSize, state: Mapping[str, torch.Tensor], stock: bool = False,
                       architecture: Mapping[str, object] = {}):
    """A model of `size` and `architecture` holding `state` (with its masks). Built and loaded
    rather than deep-copied: the positional convolution's weight_norm makes wav2vec2 models refuse
    deepcopy."""
    model = build_untrained_ctc_model(size, stock, architecture)
    model.load_state_dict(state, strict=True)
    return model


def fix_masks_as_mask_path_does(model: SubnetsWav2VecCtc, masks: Mapping[str, torch.Tensor],
                                metadata: Mapping[str, object], storage: str = "kept") -> None:
    """Fixes `masks` on the model exactly as `+model.mask_path` (with `+model.mask_storage`) does:
    through a mask file (with `metadata`) read by `apply_mask_file`, so the file format's checks
    run too."""
    with tempfile.TemporaryDirectory(prefix="fairseq-subnets-masks-") as directory:
        path = os.path.join(directory, "mask.safetensors")
        save_mask_file(path, masks, metadata)
        apply_mask_file(model, path, storage=storage)


def save_untrained_pretraining_checkpoint(path, size: CtcModelSize, normalize: bool, **architecture) -> int:
    """Writes a wav2vec2 pretraining checkpoint with random weights (an encoder of `size` with
    `architecture`, the quantizer and projections included, as a real one has) that stock
    fine-tuning accepts as `model.w2v_path`; its task's `normalize` must equal the fine-tuning
    task's. Seed torch first for reproducible weights. Returns the number of parameters."""
    model_config = wav2vec2_model_config(size, **architecture)
    model = Wav2Vec2Model.build_model(model_config)
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.model = model_config
    cfg.task = {"_name": STOCK_PRETRAINING_TASK, "data": "unused", "normalize": normalize}
    torch.save(trainer_checkpoint(cfg, model.state_dict(), "Wav2vecCriterion"), path)
    return sum(parameter.numel() for parameter in model.parameters())
