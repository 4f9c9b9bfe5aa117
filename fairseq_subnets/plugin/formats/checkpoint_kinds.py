"""Which kind of wav2vec2 checkpoint a file is, pretraining or fine-tuned CTC, and how deep its encoder.

Each kind has its places: a pretraining checkpoint is `model.w2v_path` and a grid file's
`pretrained`; a fine-tuned CTC checkpoint is `model.init_from`, fairseq-generate's `--path` and a
grid file's `upstream.checkpoints`. Given in the other kind's place, stock fairseq fails deep inside
(an AttributeError, a bare AssertionError) or only after other work has run, so every such key is
checked here first, and the error names the key, the file and where that kind of file belongs.

The kind is read from where the encoder sits in the state dict (`core.targets.model_prefix`), which
every checkpoint format has, old ones with `args` instead of `cfg` included.
"""

from ...core.targets import model_prefix, num_encoder_layers, relative_weight_names
from .checkpoints import CheckpointLoadError, load_fairseq_checkpoint, mapped_checkpoint
from ...errors import PluginInputError

PRETRAINING = "pretraining"
FINE_TUNED = "fine-tuned"
DESCRIPTIONS = {PRETRAINING: "a wav2vec2 pretraining checkpoint", FINE_TUNED: "a fine-tuned wav2vec2 CTC checkpoint"}


class CheckpointKindError(PluginInputError):
    """A checkpoint key names an unreadable file or one of the other kind; the message starts with
    the key."""


def checkpoint_kind(checkpoint, key, path):
    """PRETRAINING or FINE_TUNED, from where the wav2vec2 encoder sits in the model state."""
    try:
        prefix = model_prefix(checkpoint["model"].keys())
    except ValueError:
        raise CheckpointKindError(
            f"{key}: {path} is not a wav2vec2 checkpoint (no encoder layers in its model state)") from None
    return PRETRAINING if prefix == "" else FINE_TUNED


def encoder_layer_count(checkpoint):
    """The number of encoder layers of a checkpoint's wav2vec2 model, of either kind."""
    return num_encoder_layers(relative_weight_names(checkpoint["model"].keys()))


def read_checkpoint_of_kind(path, wanted, key, advice, weights=True):
    """The checkpoint `key` names, if it is of kind `wanted`; else CheckpointKindError
    "KEY: PATH is <its kind>, not <wanted>; ADVICE". Without `weights` its tensors are only
    memory-mapped: for checks before another reader loads the file."""
    try:
        checkpoint = load_fairseq_checkpoint(path) if weights else mapped_checkpoint(path)
    except CheckpointLoadError as error:
        raise CheckpointKindError(f"{key}: {error}") from None
    kind = checkpoint_kind(checkpoint, key, path)
    if kind != wanted:
        raise CheckpointKindError(f"{key}: {path} is {DESCRIPTIONS[kind]}, not {DESCRIPTIONS[wanted]}; {advice}")
    return checkpoint
