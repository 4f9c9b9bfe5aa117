"""`subnets_wav2vec_ctc`: fairseq's wav2vec2 CTC model, the carrier of masks and adapters.

With no mask or adapter configured it is exactly the stock `wav2vec_ctc` model (same parameters,
same outputs from the same checkpoint).
"""
from dataclasses import dataclass

from fairseq.models import register_model
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc


@dataclass
class SubnetsWav2Vec2CtcConfig(Wav2Vec2CtcConfig):
    pass


@register_model("subnets_wav2vec_ctc", dataclass=SubnetsWav2Vec2CtcConfig)
class SubnetsWav2VecCtc(Wav2VecCtc):
    pass
