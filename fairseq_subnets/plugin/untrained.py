"""wav2vec2 CTC models of a chosen size with random weights, built from a config alone.

Benchmarks and tests need real fairseq models (the stock convolutional feature extractor, fairseq's
own attention, our `subnets_wav2vec_ctc` or the stock `wav2vec_ctc`) of a given size, but have no
pretraining checkpoint to point `w2v_path` at. fairseq's wav2vec2 encoder also builds from the
pretraining config given in `w2v_args`, which is what these functions write. The benchmarks and
the test factory both build through here, so a test measures the very models a benchmark times.
"""
import os
import tempfile
import types
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
from omegaconf import OmegaConf

from ..core.maskfile import save_mask_file
from .models import SubnetsWav2Vec2CtcConfig, SubnetsWav2VecCtc


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


def ctc_model_config(size: CtcModelSize, stock: bool = False):
    """The model config (`subnets_wav2vec_ctc`, or stock `wav2vec_ctc`) whose wav2vec2 encoder is
    built from `w2v_args`, so `w2v_path` is never read; its task is only instantiated, so its data
    directory need not exist either. A DictConfig, as fairseq hands models their config."""
    model = OmegaConf.structured(Wav2Vec2Config(
        encoder_layers=size.layers, encoder_embed_dim=size.width,
        encoder_ffn_embed_dim=size.ffn, encoder_attention_heads=size.attention_heads,
    ))
    model._name = "wav2vec2"
    w2v_args = OmegaConf.create({"task": {"_name": "audio_pretraining", "data": "unused", "normalize": False},
                                 "model": model})
    config_class = Wav2Vec2CtcConfig if stock else SubnetsWav2Vec2CtcConfig
    return OmegaConf.structured(config_class(w2v_path="unused", w2v_args=w2v_args, data="unused", normalize=False))


def build_untrained_ctc_model(size: CtcModelSize, stock: bool = False):
    """A freshly initialised `subnets_wav2vec_ctc` model (stock `Wav2VecCtc` with `stock`) with
    `size.vocab` outputs; seed torch first for reproducible weights."""
    task = types.SimpleNamespace(target_dictionary=range(size.vocab))
    model_class = Wav2VecCtc if stock else SubnetsWav2VecCtc
    return model_class.build_model(ctc_model_config(size, stock), task)


def rebuild_with_state(size: CtcModelSize, state: Mapping[str, torch.Tensor], stock: bool = False):
    """A model of `size` holding `state` (with its masks). Built and loaded rather than
    deep-copied: the positional convolution's weight_norm makes wav2vec2 models refuse deepcopy."""
    model = build_untrained_ctc_model(size, stock)
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
        model.apply_mask_file(path, storage=storage)
