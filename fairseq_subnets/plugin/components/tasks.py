"""`subnets_audio_finetuning`: fairseq's audio fine-tuning task plus what our workflows need.

Additions to the stock task (every stock key keeps working):
- `build_generator` returns a greedy CTC decoder, so stock `fairseq-generate` decodes CTC models;
- manifests are validated when a split is loaded, so a broken manifest fails at start-up with the
  file and line, not deep inside a data worker;
- a batch-size limit smaller than the longest utterance fails with the flag to change;
- the model hears when an epoch begins (for `model.freeze_encoder_epochs`), and in distributed
  training every rank checks at each epoch that all ranks hold the identical mask;
- a model rebuilt from a checkpoint (fairseq-generate, export) takes its weights and masks from
  the checkpoint alone: `model.init_from` and `model.mask_path` are training-time inputs, not read.
- a plugin model key named in fairseq-generate's `--model-overrides` takes effect on a checkpoint
  whose config lacks it, also on a stock CTC checkpoint (a stock export), then built as the
  plugin's model (`add_overridden_keys_the_checkpoint_lacks`).

`subnets_multilingual_finetuning` extends it to several languages trained at once in monolingual
batches, with per-language or shared output layers (README "Multilingual fine-tuning").
"""
import ast
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, List, Optional

import torch
from fairseq.data import Dictionary, data_utils, iterators
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from fairseq.logging.meters import safe_round
from fairseq.tasks import register_task
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask
from fairseq.utils import split_paths
from omegaconf import II, open_dict

from ...component_names import PLUGIN_CTC_MODEL, PLUGIN_FINETUNING_TASK, PLUGIN_MULTILINGUAL_TASK, STOCK_CTC_MODEL
from ...core.holding import unchanged_through
from ...data.check import check_manifest_dir
from ...data.language_sampling import check_sampling_alpha, language_probabilities
from ...techniques.extension import RunSettings, check_masks_identical_across_ranks, refuse_decoding_only_keys
from ...techniques.language_heads import LANGUAGE_KEY
from ...tri_stage_phases import check_tri_stage_phases
from ..formats.checkpoint_kinds import DESCRIPTIONS, FINE_TUNED, PRETRAINING
from ..formats.compact import check_checkpoints_to_decode
from ..formats.upstream import LANGUAGE_DICTIONARIES_KEY
from .errors import PluginInputError, one_line_errors
from .generator import CtcGreedyGenerator
from .models import (
    RECORDED_MODEL_KEYS, TECHNIQUES, TRAINING_ONLY_MODEL_KEYS, SubnetsWav2Vec2CtcConfig, SubnetsWav2VecCtc,
)
from .multilingual_data import MonolingualBatchDataset, all_batches_in_language_order, language_block_sampler
from .reproducible_steps import ReproducibleSteps
from .resume import check_resumed_run
from .run_config import run_setting

logger = logging.getLogger(__name__)

MAX_PROBLEMS_SHOWN = 20




def subnets_model(model):
    """The `subnets_wav2vec_ctc` model inside fairseq's distributed wrappers (which hand the task
    the wrapped model at optimizer steps), or None for another model: the task then adds nothing."""
    while not isinstance(model, SubnetsWav2VecCtc):
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return None
        model = inner
    return model


class ManifestError(PluginInputError):
    """The manifest set of a split is unusable; the message lists the problems with file and line."""


@dataclass
class SubnetsAudioFinetuningConfig(AudioFinetuningConfig):
    check_manifests: bool = field(
        default=True,
        metadata={"help": "validate audio, labels and dictionary coverage of each split when it is loaded"},
    )


@register_task(PLUGIN_FINETUNING_TASK, dataclass=SubnetsAudioFinetuningConfig)
class SubnetsAudioFinetuningTask(ReproducibleSteps, AudioFinetuningTask):
    cfg: SubnetsAudioFinetuningConfig

    @one_line_errors
    def __init__(self, cfg):
        if not os.path.isdir(cfg.data):
            raise ManifestError(
                f"task.data={cfg.data} is not a directory (working directory: {os.getcwd()}; "
                "Hydra changes it to hydra.run.dir, so pass an absolute path)"
            )
        decoded = run_setting(cfg, "common_eval.path")  # fairseq-generate sets the task up before loading them
        check_checkpoints_to_decode(split_paths(decoded) if decoded else None)
        super().__init__(cfg)

    @one_line_errors
    def load_dataset(self, split, task_cfg=None, **kwargs):
        task_cfg = task_cfg or self.cfg
        if self.cfg.check_manifests and task_cfg.multi_corpus_keys is None:
            self.raise_on_manifest_problems(split)
        super().load_dataset(split, task_cfg, **kwargs)

    def raise_on_manifest_problems(self, split):
        raise_on_manifest_problems(self.cfg.data, split)

    reports_epochs_to_model = True
    """The task calls the model's `begin_epoch`, which `model.freeze_encoder_epochs` needs (a stock
    task does not)."""

    @one_line_errors
    def build_model(self, model_cfg, from_checkpoint=False):
        if from_checkpoint:
            refuse_pretraining_checkpoint(self.cfg, model_cfg)
            add_overridden_keys_the_checkpoint_lacks(self.cfg, model_cfg)
            with open_dict(model_cfg):
                for key in TRAINING_ONLY_MODEL_KEYS:
                    if model_cfg.get(key) is not None:
                        model_cfg[key] = None
        else:
            refuse_decoding_only_keys(TECHNIQUES, model_cfg)
            check_training_start(self.cfg, model_cfg)
        model = super().build_model(model_cfg, from_checkpoint)
        with open_dict(model_cfg):
            for key in RECORDED_MODEL_KEYS:
                if key in getattr(model, "cfg", {}):
                    model_cfg[key] = model.cfg[key]
        if not from_checkpoint and isinstance(model, SubnetsWav2VecCtc):
            if model.writes_parameters_after_steps():
                refuse_fp32_weight_copies(self.cfg)
            model.prepare_run(RunSettings(run_setting(self.cfg, "checkpoint.save_dir"),
                                          run_setting(self.cfg, "optimization.max_update"),
                                          run_setting(self.cfg, "lr_scheduler._name")))
        return model

    @one_line_errors
    def build_criterion(self, cfg, from_checkpoint=False):
        return super().build_criterion(cfg, from_checkpoint)

    def optimizer_step(self, optimizer, model, update_num):
        """fairseq's step, leaving what the model holds still in this update bit-identical
        (pathway updates: the weights outside the batch language's masks, core.holding); then,
        with that step's gradients still present, the model's own per-update work (AdaLoRA's
        rank allocator, pruning events), told how many updates are done."""
        host = subnets_model(model)
        with unchanged_through(host.held_through_step() if host is not None else []):
            super().optimizer_step(optimizer, model, update_num)
        if host is not None:
            host.after_optimizer_step(update_num + 1, optimizer)

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        host = subnets_model(model)
        if host is not None:
            host.begin_epoch(epoch)
            check_masks_identical_across_ranks(host.mask_digest())

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if self.cfg.autoregressive:
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)
        dictionary = self.target_dictionary
        return CtcGreedyGenerator(dictionary, blank_index=dictionary.index(self.blank_symbol))

    @one_line_errors
    def get_batch_iterator(self, dataset, max_tokens=None, ignore_invalid_inputs=False, **kwargs):
        check_batch_limit(dataset, max_tokens, ignore_invalid_inputs)
        return super().get_batch_iterator(
            dataset, max_tokens=max_tokens, ignore_invalid_inputs=ignore_invalid_inputs, **kwargs
        )


def check_training_start(task_cfg, model_cfg):
    """What a training run checks before it builds its model (which reads model.w2v_path, seconds
    at XLS-R size): its learning-rate schedule, and, when it resumes, the checkpoint it resumes
    from (plugin.components.resume)."""
    check_tri_stage_phases(run_setting(task_cfg, "lr_scheduler"), run_setting(task_cfg, "optimization.max_update"))
    sections = {"model": model_cfg, "task": task_cfg, "criterion": run_setting(task_cfg, "criterion"),
                "optimizer": run_setting(task_cfg, "optimizer")}
    check_resumed_run(run_setting(task_cfg, "checkpoint"), sections, RECORDED_MODEL_KEYS)


def refuse_fp32_weight_copies(task_cfg):
    """fairseq's fp16 and bf16 optimizers step fp32 copies of the weights and copy them into the
    model, so weights the model holds still or rewinds would take the copies' values at the next
    step; the memory-efficient variants step the model's own weights."""
    for precision in ("fp16", "bf16"):
        if run_setting(task_cfg, f"common.{precision}") and not run_setting(task_cfg, f"common.memory_efficient_{precision}"):
            raise PluginInputError(
                f"common.{precision}=true keeps fp32 copies of the weights in fairseq's optimizer, which would undo "
                "what pathway updates hold still and what rewinding restores: set "
                f"common.memory_efficient_{precision}=true")


def add_overridden_keys_the_checkpoint_lacks(task_cfg, model_cfg):
    """fairseq-generate's `--model-overrides` sets only the keys a checkpoint's config holds, so a
    model key of the plugin added after the checkpoint was written (`model.sparse_decoding`) would
    be dropped without a word: such keys are added to the checkpoint's model config here. A stock
    CTC model's config (a stock export's) given a key only the plugin's model has becomes the
    plugin's model, which holds the same state under the same keys, so that the key takes effect
    (sparse decoding of a pruned stock export). The overrides are read as fairseq-generate reads
    them (a Python literal)."""
    text = run_setting(task_cfg, "common_eval.model_overrides")
    overrides = ast.literal_eval(text) if text else {}
    host_keys = {entry.name for entry in fields(SubnetsWav2Vec2CtcConfig)}
    plugin_only_keys = host_keys - {entry.name for entry in fields(Wav2Vec2CtcConfig)}
    with open_dict(model_cfg):
        for key, value in overrides.items():
            if key in host_keys and key not in model_cfg:
                model_cfg[key] = value
        if model_cfg.get("_name") == STOCK_CTC_MODEL and plugin_only_keys & overrides.keys():
            model_cfg["_name"] = PLUGIN_CTC_MODEL


def refuse_pretraining_checkpoint(task_cfg, model_cfg):
    """A checkpoint decoded with this task must be a CTC model, whose config has `w2v_path`; fed a
    pretraining checkpoint, fairseq-generate would build its wav2vec2 model and then stop on a bare
    assertion about labels. The message names the checkpoint: fairseq-generate's --path, read from
    the full config above the task's (fairseq keeps the task config's parent)."""
    if "w2v_path" in model_cfg:
        return
    path = run_setting(task_cfg, "common_eval.path")
    raise PluginInputError(
        f"{path or 'the checkpoint'} is {DESCRIPTIONS[PRETRAINING]} (model {model_cfg.get('_name')}), not "
        f"{DESCRIPTIONS[FINE_TUNED]}: decode a fine-tuned model, or fine-tune this one first (model.w2v_path)"
    )


def raise_on_manifest_problems(folder, split, what=""):
    """Raises ManifestError listing the problems of `split` in the manifest folder; `what` names
    the folder's role in the message (e.g. "language 'es': ")."""
    problems = check_manifest_dir(folder, splits=[split])
    if problems:
        shown = "\n".join(str(p) for p in problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n... and {more} more" if more > 0 else ""
        raise ManifestError(
            f"{what}split '{split}' of {folder} has {len(problems)} problem(s) "
            f"(run `fairseq-subnets data check {folder}`):\n{shown}{tail}"
        )


def check_batch_limit(dataset, max_tokens, ignore_invalid_inputs):
    """Fails with the flag to change when the longest utterance cannot fit in a batch."""
    if max_tokens is not None and not ignore_invalid_inputs and len(dataset) > 0:
        longest = int(dataset.sizes.max())
        if longest > max_tokens:
            raise PluginInputError(
                f"the longest utterance has {longest} samples but max_tokens is {max_tokens} "
                "(fairseq-generate uses 12000, i.e. 0.75 s of 16 kHz audio, when neither "
                "--max-tokens nor --batch-size is given): pass --max-tokens "
                f"{max(longest, 1_600_000)} or dataset.max_tokens=..., or "
                "--skip-invalid-size-inputs-valid-test to drop long utterances"
            )


OUTPUT_LAYER_MODES = ChoiceEnum(["per_language", "shared"])
PER_LANGUAGE_VALIDATION_KEYS = ("loss", "sample_size", "c_errors", "c_total", "w_errors", "w_total")
PER_LANGUAGE_TRAINING_KEYS = ("loss", "sample_size")
LANGUAGE_MEAN_SUFFIX = "language_mean"
"""Validation keys `loss_language_mean` and `cer_language_mean`: unweighted means over languages."""


class LanguageConfigError(PluginInputError):
    """A multilingual option that cannot work; the message names the option or language."""


@dataclass
class SubnetsMultilingualFinetuningConfig(SubnetsAudioFinetuningConfig):
    languages: Any = field(
        default=None,
        metadata={"help": "language codes, each a manifest folder under `data` as `fairseq-subnets data "
                  "synth/manifest` writes them: a list ([es,ca,ast]) or comma-separated (es,ca,ast)"},
    )
    language_sampling_alpha: float = field(
        default=0.5,
        metadata={"help": "each update's language is drawn with p proportional to n ** alpha, n = the "
                  "language's training utterances (0: uniform, 1: proportional; negative refused)"},
    )
    output_layers: OUTPUT_LAYER_MODES = field(
        default="per_language",
        metadata={"help": "per_language: one output layer per language over its own dict.ltr.txt; shared: "
                  "one output layer over the union of the languages' dictionaries"},
    )
    decode_language: Optional[str] = field(
        default=None,
        metadata={"help": "decode (fairseq-generate) only this language's split with its output layer"},
    )
    train_subset: str = II("dataset.train_subset")
    update_freq: List[int] = II("optimization.update_freq")


@register_task(PLUGIN_MULTILINGUAL_TASK, dataclass=SubnetsMultilingualFinetuningConfig)
class SubnetsMultilingualFinetuningTask(SubnetsAudioFinetuningTask):
    """Fine-tuning on several languages at once in monolingual batches (see
    data.language_sampling): `task.data` is the folder holding one manifest folder per language
    (`manifests/built/demo` holds es/, ca/, ...). Every batch's `net_input` names its language, the
    model selects that language's output layer and masks; validation logs loss and CER per
    language and their means; fairseq-generate decodes one language (`--decode-language`)."""

    cfg: SubnetsMultilingualFinetuningConfig

    @one_line_errors
    def __init__(self, cfg):
        self.languages = parse_languages(cfg.languages)
        check_sampling_alpha(cfg.language_sampling_alpha)
        if cfg.decode_language is not None and cfg.decode_language not in self.languages:
            raise LanguageConfigError(
                f"task.decode_language={cfg.decode_language} is not one of task.languages ({', '.join(self.languages)})")
        super().__init__(cfg)
        for language in self.languages:
            folder = os.path.join(cfg.data, language)
            if not os.path.isdir(folder):
                raise ManifestError(f"language '{language}': no manifest folder {folder} (task.languages lists "
                                    f"the folders under task.data={cfg.data})")
        self.language_dictionaries = self.load_language_dictionaries()
        self.active_language = cfg.decode_language or self.languages[0]

    def load_language_dictionaries(self):
        """{language: Dictionary}: each language's own, or all the same union dictionary."""
        own = {}
        for language in self.languages:
            path = os.path.join(self.cfg.data, language, f"dict.{self.cfg.labels}.txt")
            if not os.path.isfile(path):
                raise ManifestError(f"language '{language}': dictionary {path} not found")
            own[language] = Dictionary.load(path)
        if self.cfg.output_layers == "per_language":
            return own
        union = Dictionary()
        for dictionary in own.values():
            for symbol, count in zip(dictionary.symbols[dictionary.nspecial:], dictionary.count[dictionary.nspecial:]):
                union.add_symbol(symbol, n=count)
        return {language: union for language in self.languages}

    def state_dict(self):
        """fairseq's task state, saved in every checkpoint, with each language's dictionary symbols:
        a run that starts from this checkpoint (model.init_from) keeps a language's output layer
        exactly when its dictionary is the same (plugin.formats.upstream)."""
        return {**super().state_dict(), LANGUAGE_DICTIONARIES_KEY: {
            language: list(dictionary.symbols) for language, dictionary in self.language_dictionaries.items()}}

    @property
    def target_dictionary(self):
        """The dictionary of the language being trained, validated or decoded."""
        return self.language_dictionaries[self.active_language]

    @contextmanager
    def using_language(self, language):
        previous, self.active_language = self.active_language, language
        try:
            yield
        finally:
            self.active_language = previous

    def output_layout(self):
        """(languages, output layer mode, output sizes) that a model built for this task records in
        its config: one size per language, or one for the shared layer."""
        if self.cfg.output_layers == "per_language":
            sizes = [len(self.language_dictionaries[language]) for language in self.languages]
        else:
            sizes = [len(self.language_dictionaries[self.languages[0]])]
        return list(self.languages), str(self.cfg.output_layers), sizes

    @one_line_errors
    def load_dataset(self, split, task_cfg=None, **kwargs):
        languages = [self.cfg.decode_language] if self.cfg.decode_language else self.languages
        datasets = {}
        for language in languages:
            with self.using_language(language):
                super().load_dataset(f"{language}/{split}", task_cfg, **kwargs)
            datasets[language] = self.datasets.pop(f"{language}/{split}")
        self.datasets[split] = MonolingualBatchDataset(datasets)

    def raise_on_manifest_problems(self, split):
        language, _, language_split = split.partition("/")
        raise_on_manifest_problems(os.path.join(self.cfg.data, language), language_split, f"language '{language}': ")

    @one_line_errors
    def build_model(self, model_cfg, from_checkpoint=False):
        if from_checkpoint:
            self.check_checkpoint_layout(model_cfg)
        return super().build_model(model_cfg, from_checkpoint)

    def check_checkpoint_layout(self, model_cfg):
        """Refuses a checkpoint whose languages or output layers differ from this task's."""
        recorded = (model_cfg.get("languages"), model_cfg.get("language_output_layers"),
                    model_cfg.get("language_output_sizes"))
        if recorded[0] is None:
            raise LanguageConfigError("the checkpoint is not a multilingual model (its config has no languages); "
                                      "decode it with --task subnets_audio_finetuning")
        recorded = (list(recorded[0]), recorded[1], list(recorded[2]))
        if self.cfg.decode_language is not None and self.cfg.decode_language not in recorded[0]:
            raise LanguageConfigError(f"the checkpoint has no language '{self.cfg.decode_language}' to decode "
                                      f"(it was trained on {', '.join(recorded[0])})")
        expected = self.output_layout()
        if recorded[0] != expected[0]:
            raise LanguageConfigError(f"the checkpoint was trained on languages {','.join(recorded[0])}; pass "
                                      f"--languages {','.join(recorded[0])} (this task has {','.join(expected[0])})")
        if recorded[1] != expected[1]:
            raise LanguageConfigError(f"the checkpoint has {recorded[1]} output layers; pass --output-layers "
                                      f"{recorded[1]} (this task has {expected[1]})")
        if recorded[2] != expected[2]:
            raise LanguageConfigError(f"the checkpoint's output layer sizes {recorded[2]} differ from this task's "
                                      f"dictionaries {expected[2]} ({self.cfg.data}/<language>/dict.ltr.txt changed?)")
        if recorded[1] == "per_language" and self.cfg.decode_language is None:
            raise LanguageConfigError("each language of this checkpoint has its own output layer and dictionary: "
                                      f"pass --decode-language (one of {', '.join(recorded[0])})")

    @one_line_errors
    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1, num_shards=1,
                           shard_id=0, num_workers=0, epoch=1, data_buffer_size=0, disable_iterator_cache=False,
                           update_epoch_batch_itr=False, **shuffling_options):
        """Monolingual batches: sampled language blocks for the training split (see
        language_block_sampler), every utterance once, language by language, otherwise. fairseq's
        shuffling options are ignored: the plan orders the batches."""
        check_batch_limit(dataset, max_tokens, ignore_invalid_inputs)
        cache = not (disable_iterator_cache or update_epoch_batch_itr)
        if cache and dataset in self.dataset_to_epoch_iter:
            return self.dataset_to_epoch_iter[dataset]
        dataset.set_epoch(epoch)

        def make_language_batches(language_dataset, epoch):
            with data_utils.numpy_seed(seed + epoch):
                indices = language_dataset.ordered_indices()
            if max_positions is not None:
                indices = self.filter_indices_by_size(indices, language_dataset, max_positions, ignore_invalid_inputs)
            return language_dataset.batch_by_size(indices, max_tokens=max_tokens, max_sentences=max_sentences,
                                                  required_batch_size_multiple=required_batch_size_multiple)

        if dataset is self.datasets.get(self.cfg.train_subset):
            probabilities = language_probabilities(dataset.language_sizes(), self.cfg.language_sampling_alpha)
            batch_sampler = language_block_sampler(
                make_language_batches, probabilities,
                block_size_of_epoch=lambda epoch: num_shards * update_freq_of_epoch(self.cfg.update_freq, epoch),
                seed=seed, on_plan=partial(log_language_plan, probabilities=probabilities))
        else:
            batch_sampler = all_batches_in_language_order(dataset, lambda d: make_language_batches(d, epoch))
        epoch_iter = iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=batch_sampler, seed=seed,
            num_shards=num_shards, shard_id=shard_id, num_workers=num_workers, epoch=epoch,
            buffer_size=data_buffer_size, disable_shuffling=True,
        )
        if cache:
            self.dataset_to_epoch_iter[dataset] = epoch_iter
        return epoch_iter

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        language = sample["net_input"][LANGUAGE_KEY]
        with self.using_language(language):
            loss, sample_size, logging_output = super().train_step(
                sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)
        add_per_language_counts(logging_output, language, self.languages, PER_LANGUAGE_TRAINING_KEYS)
        for other in self.languages:
            logging_output[f"_batches_{other}"] = int(other == language)
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion):
        language = sample["net_input"][LANGUAGE_KEY]
        with self.using_language(language):
            loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        add_per_language_counts(logging_output, language, self.languages, PER_LANGUAGE_VALIDATION_KEYS)
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        log_language_shares(logging_outputs, self.languages)
        log_per_language_metrics(logging_outputs, self.languages)


def parse_languages(value):
    """task.languages as a list of codes, from a list or a comma-separated string."""
    if isinstance(value, str):
        languages = [code.strip() for code in value.split(",") if code.strip()]
    else:
        languages = [str(code) for code in (value or [])]
    if not languages:
        raise LanguageConfigError("task.languages is empty: name the language folders under task.data, "
                                  "e.g. task.languages=[es,ca,ast] (--languages es,ca,ast in fairseq-generate)")
    repeated = sorted({code for code in languages if languages.count(code) > 1})
    if repeated:
        raise LanguageConfigError(f"task.languages lists {', '.join(repeated)} more than once")
    return languages


def update_freq_of_epoch(update_freq, epoch):
    """fairseq's rule: optimization.update_freq[epoch - 1], the last entry for later epochs."""
    return update_freq[min(epoch, len(update_freq)) - 1]


def log_language_plan(epoch, plan, probabilities):
    shares = plan.language_shares()
    listing = ", ".join(f"{language} {shares[language]:.3f} (p {probabilities[language]:.3f})"
                        for language in plan.languages)
    logger.info("epoch %d: %d updates of %d monolingual batches each; language shares: %s",
                epoch, len(plan.block_languages), plan.block_size, listing)


def add_per_language_counts(logging_output, language, languages, keys):
    """Copies `keys` of a monolingual batch's logging output to `_<key>_<language>`, with zeros
    for every other language: every rank then sends the same keys, which fairseq's summed
    all-reduce of logging outputs requires."""
    for other in languages:
        for key in keys:
            logging_output[f"_{key}_{other}"] = logging_output.get(key, 0) if other == language else 0


def log_language_shares(logging_outputs, languages):
    """`share_<language>`: the fraction of batches (all ranks, one update) of each language,
    averaged over the log interval or epoch; `mixed_language_updates` counts updates whose ranks
    or accumulated batches did not all train the same language (always 0 by construction)."""
    batches = {language: sum(log.get(f"_batches_{language}", 0) for log in logging_outputs) for language in languages}
    total = sum(batches.values())
    if not total:
        return
    for language in languages:
        metrics.log_scalar(f"share_{language}", batches[language] / total, priority=300, round=3)
    metrics.log_scalar_sum("mixed_language_updates", int(max(batches.values()) < total), priority=300)


def log_per_language_metrics(logging_outputs, languages):
    """`loss_<language>` (training and validation), `cer_<language>` and `wer_<language>`
    (validation), and their unweighted means over languages `loss_language_mean`,
    `cer_language_mean` (the shipped best-checkpoint metric)."""
    def total(key, language):
        return sum(log.get(f"_{key}_{language}", 0) for log in logging_outputs)

    validating = False
    for language in languages:
        sample_size = total("sample_size", language)
        if sample_size:
            metrics.log_scalar(f"loss_{language}", total("loss", language) / sample_size / math.log(2),
                               sample_size, round=3)
        for rate, errors, length in (("cer", "c_errors", "c_total"), ("wer", "w_errors", "w_total")):
            if any(f"_{length}_{language}" in log for log in logging_outputs):
                validating = True
                metrics.log_scalar(f"_{errors}_{language}", total(errors, language))
                metrics.log_scalar(f"_{length}_{language}", total(length, language))
                metrics.log_derived(f"{rate}_{language}", partial(error_rate, errors, length, language))
    if validating:
        metrics.log_derived(f"cer_{LANGUAGE_MEAN_SUFFIX}", partial(mean_over_languages, languages, "cer"))
        metrics.log_derived(f"loss_{LANGUAGE_MEAN_SUFFIX}", partial(mean_over_languages, languages, "loss"))


def error_rate(errors, length, language, meters):
    """Percent errors of a language from the summed meters (nan when it has no reference)."""
    errors_meter, length_meter = meters.get(f"_{errors}_{language}"), meters.get(f"_{length}_{language}")
    if errors_meter is None or length_meter is None or length_meter.sum == 0:
        return float("nan")
    return safe_round(errors_meter.sum * 100.0 / length_meter.sum, 3)


def mean_over_languages(languages, metric, meters):
    """Unweighted mean over languages of `cer` (from the error meters) or `loss` (nan when a
    language has no value, so an incomplete validation never looks best)."""
    if metric == "cer":
        values = [error_rate("c_errors", "c_total", language, meters) for language in languages]
    else:
        values = [meters[f"loss_{language}"].avg if f"loss_{language}" in meters else float("nan")
                  for language in languages]
    return safe_round(sum(values) / len(values), 3)
