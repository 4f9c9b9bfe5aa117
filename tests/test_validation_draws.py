"""Validation's random draws (wav2vec2 pretraining's masks and negatives) come from the run's seed
and the update count, in process, with a tiny stock wav2vec2 model; and they leave torch's state
as they found it, so the training stream never sees validation."""
import pytest
import torch

from fairseq_subnets.plugin.components.reproducible_steps import validation_draws
from fairseq_subnets.plugin.components.time_masking import install_seeded_masking, masks_drawn_for

UTTERANCES = torch.tensor([3, 7])


@pytest.fixture
def model():
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(1)
    w2v = Wav2Vec2Model(Wav2Vec2Config(
        conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 2", encoder_layers=1, encoder_embed_dim=32,
        encoder_ffn_embed_dim=64, encoder_attention_heads=2, final_dim=16, latent_vars=8, num_negatives=5,
        conv_pos=8, conv_pos_groups=4, mask_prob=0.65, mask_length=2))
    w2v.seeded_masking = install_seeded_masking(w2v)
    return w2v.eval()


def validation_logits(model, update, fixed_seed=None):
    """The logits over target and negatives of one validation batch after `update` updates."""
    with masks_drawn_for(model, update - 1, {"id": UTTERANCES}):
        pass  # the training step that reaches `update`
    audio = torch.sin(torch.arange(2 * 4000, dtype=torch.float32) / 7).view(2, 4000)
    with torch.no_grad(), validation_draws(model, {"id": UTTERANCES}, fixed_seed):
        return model(source=audio, mask=True)["x"]


def test_a_validation_draws_the_same_at_the_same_update_and_leaves_torch_state_alone(model):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = validation_logits(model, 40)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)  # whatever the training stream's state, validation draws alike
    assert torch.equal(validation_logits(model, 40), first)


def test_validations_at_other_updates_draw_otherwise_unless_the_validation_seed_is_fixed(model):
    assert not torch.equal(validation_logits(model, 40), validation_logits(model, 41))
    assert torch.equal(validation_logits(model, 40, fixed_seed=5), validation_logits(model, 41, fixed_seed=5))
    assert not torch.equal(validation_logits(model, 40, fixed_seed=5), validation_logits(model, 40, fixed_seed=6))


def test_without_the_plugins_draws_two_validations_differ(model):
    """What the tests above guard against: stock masks from OS entropy, negatives from torch's
    current state."""
    audio = torch.sin(torch.arange(2 * 4000, dtype=torch.float32) / 7).view(2, 4000)
    with torch.no_grad():
        assert not torch.equal(model(source=audio, mask=True)["x"], model(source=audio, mask=True)["x"])
