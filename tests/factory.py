"""Models, mask sets and checkpoints for tests, built through the package's public builders
(`benchmarks.untrained`, `core.targets.encoder_weight_shapes`), the very ones the benchmarks use.

fairseq is imported inside the functions that need it, so tests of the pure-torch core can use the
shape and mask helpers without importing fairseq.
"""
import string

import torch

TINY = dict(layers=2, width=64, ffn=128)
"""A two-layer encoder: real fairseq modules, small enough to build in a fraction of a second."""
BASE = dict(layers=12, width=768, ffn=3072)
"""wav2vec2 BASE."""
LETTERS = ["|"] + list(string.ascii_lowercase) + ["'"]
"""The characters of the checkpoint's dictionary (fairseq adds its 4 special symbols)."""


def encoder_shapes(layers, width, ffn):
    """Model-relative name -> shape of every prunable matrix of an encoder of this size."""
    from fairseq_subnets.core.targets import encoder_weight_shapes

    return encoder_weight_shapes(layers, width, ffn)


def random_encoder_masks(sparsity, seed=0, **size):
    """An encoder-shaped random mask set with exactly round(sparsity * n) pruned weights."""
    from fairseq_subnets.core.pruning import random_masks

    return random_masks(encoder_shapes(**size), sparsity, seed=seed)


def ctc_model(seed=0, vocab=32, **size):
    """A `subnets_wav2vec_ctc` model with random weights (TINY unless a size is given)."""
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, build_untrained_ctc_model

    torch.manual_seed(seed)
    return build_untrained_ctc_model(CtcModelSize(vocab=vocab, **(size or TINY)))


def host_model(seed=0, vocab=32, **model_fields):
    """A TINY `subnets_wav2vec_ctc` model built by the host from its config with `model_fields`
    (`score_sparsity=0.1`, `tuner="lora"`, ...), as fairseq builds it, without a task."""
    import types

    from fairseq_subnets.benchmarks.untrained import CtcModelSize, ctc_model_config
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc

    cfg = ctc_model_config(CtcModelSize(vocab=vocab, **TINY))
    for key, value in model_fields.items():
        cfg[key] = value
    torch.manual_seed(seed)
    return SubnetsWav2VecCtc.build_model(cfg, types.SimpleNamespace(target_dictionary=range(vocab)))


def masked_ctc_model(sparsity, seed=0, vocab=32, **size):
    """`ctc_model` with random masks fixed as `+model.mask_path` fixes them; returns (model, masks)."""
    from fairseq_subnets.core.pruning import random_masks
    from fairseq_subnets.core.targets import select_weights
    from fairseq_subnets.benchmarks.untrained import fix_masks_as_mask_path_does

    model = ctc_model(seed, vocab, **size)
    shapes = {name: weight.shape for name, weight in select_weights(model.state_dict()).items()}
    masks = random_masks(shapes, sparsity, seed=seed)
    fix_masks_as_mask_path_does(model, masks, {"method": "random", "sparsity": sparsity, "seed": seed})
    return model, masks


def write_plugin_checkpoint(directory, sparsity=0.5, seed=0, full_task_config=False):
    """A fine-tuning checkpoint laid out as fairseq's trainer writes it (cfg as plain containers,
    the task's Dictionary in task_state) for a masked TINY `subnets_wav2vec_ctc` model, next to the
    `dict.ltr.txt` its task reads. With `full_task_config`, the task's config holds every key, as
    fairseq-generate needs to load a split with it. Returns (checkpoint path, model, masks)."""
    from fairseq.data import Dictionary
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    from fairseq_subnets.plugin.formats.checkpoints import trainer_checkpoint
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, ctc_model_config

    dictionary = Dictionary()
    for letter in LETTERS:
        dictionary.add_symbol(letter)
    dictionary.save(str(directory / "dict.ltr.txt"))
    model, masks = masked_ctc_model(sparsity, seed, vocab=len(dictionary))
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.model = ctc_model_config(CtcModelSize(vocab=len(dictionary), **TINY))
    cfg.model._name = "subnets_wav2vec_ctc"
    cfg.task = {"_name": "subnets_audio_finetuning", "data": str(directory), "labels": "ltr", "normalize": False}
    if full_task_config:
        from fairseq_subnets.plugin.components.tasks import SubnetsAudioFinetuningConfig

        cfg.task = OmegaConf.merge(OmegaConf.structured(SubnetsAudioFinetuningConfig), cfg.task)
    path = directory / "checkpoint_best.pt"
    torch.save(trainer_checkpoint(cfg, model.state_dict(), "SubnetsCtcCriterion",
                                  task_state={"target_dictionary": dictionary}), path)
    return path, model, masks


def write_run_checkpoint(path, seed=0, **model_fields):
    """A fine-tuning run's checkpoint as fairseq's trainer writes it (cfg with the recorded
    transform plan and w2v_args, the task's Dictionary in task_state) for a TINY
    `subnets_wav2vec_ctc` model built with `model_fields` (`tuner="lora"`, `score_sparsity=0.5`, ...),
    its transforms freshly built. Returns the model, whose trainable parameters are what the run's
    optimizer would hold."""
    import types

    from fairseq.data import Dictionary
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    from fairseq_subnets.plugin.formats.checkpoints import trainer_checkpoint
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, ctc_model_config

    dictionary = Dictionary()
    for letter in LETTERS:
        dictionary.add_symbol(letter)
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.model = ctc_model_config(CtcModelSize(vocab=len(dictionary), **TINY))
    cfg.model._name = "subnets_wav2vec_ctc"
    for key, value in model_fields.items():
        cfg.model[key] = value
    torch.manual_seed(seed)
    model = SubnetsWav2VecCtc.build_model(cfg.model, types.SimpleNamespace(target_dictionary=dictionary))
    cfg.task = {"_name": "subnets_audio_finetuning", "data": "unused", "labels": "ltr", "normalize": False}
    torch.save(trainer_checkpoint(cfg, model.state_dict(), "SubnetsCtcCriterion",
                                  task_state={"target_dictionary": dictionary}), path)
    return model
