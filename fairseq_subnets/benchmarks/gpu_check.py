"""The prepared GPU check (`fairseq-subnets bench gpu`): every training mode at XLS-R 300M shape in
fp16 through stock `fairseq-hydra-train`, then a decode with stock `fairseq-generate`, an export
and a check that pruned effective weights are still exactly 0, all written to one JSON file.

The package was written and tested on CPUs only; users train on GPUs. A GPU is lent to us rarely
and briefly, so this check is prepared to run once, unattended, within 8 minutes, and to tell
everything a first GPU run can tell: does each mode train, decode and export under fp16, how fast
is it against stock fine-tuning of the same model in the same run, how much GPU memory does it
take, and do masks still hold under half precision. Nothing is downloaded: the pretrained model
has random weights (XLS-R's architecture and size) and the audio is random noise with random
transcripts, so accuracy means nothing; speed, memory and correctness of the machinery do.

How each number is measured, and why:
- **Speed.** Every mode trains with `common.log_interval=1`, so fairseq's own `train_inner` line
  after each update gives `ups`, the updates per second since the line before (its meter is reset
  after every line). The first quarter of the updates (at least the first) is warm-up and not
  timed: the first update's meter starts at its own end, and the first steps pay for CUDA's lazy
  initialisation and fp16's loss-scale search. A mode's speed is 1 / the median seconds per timed
  update, its ratio that speed over the reference's (`stock`: the same shipped config with the
  stock model, task and criterion, no plugin component). An update skipped for fp16 overflow logs
  no line; its time goes to the next update's, which the median discounts.
- **Peak GPU memory.** fairseq's trainer logs `gb_free` at every update: the device's total memory
  less `torch.cuda.max_memory_allocated()` of the training process since the previous update,
  after which it resets the peak. The first reset comes after the first update, so the smallest
  `gb_free` of a run, taken from the total, is the peak allocated memory of that training process
  from its start to its last update (model building and loading included). It needs no change to
  the plugin and no poller beside the run; `nvidia-smi` would see the allocator's reserved memory
  and the CUDA context of every process on the device instead. Resolution: 0.1 GiB (fairseq rounds).
- **Pruned weights.** The trained checkpoint is read weights-only; its masks (fixed, learned,
  iterative or per-language: all a weight's masks combined) come from the stored state, and its
  effective weights from the same weight stacks the model runs (see pruned_weights_check). Every
  pruned entry must be exactly 0 there and in the export.

Each mode's `checkpoint.save_dir` keeps only its logs once its decode and export are done
(checkpoints at this size would fill the disk): the run stores no optimizer state
(`checkpoint.no_save_optimizer_state=true`), which none of the checks reads. Trainings run one
after another with the GPU to themselves (two at a time in the dry mode, sharing the cores out);
decodes and exports run afterwards, several at a time.
The report is rewritten (atomically) after every step, so a run cut short keeps what it measured.

`--dry-run` runs the same code on the CPU at a tiny shape (a narrowed feature extractor included)
in fp32 with 2 updates per mode: what the test suite runs, the only part verified so far.
"""
import datetime
import json
import math
import os
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import USER_DIR
from ..atomic import write_atomically
from ..component_names import PLUGIN_MULTILINGUAL_TASK, STOCK_CTC_CRITERION, STOCK_CTC_MODEL, STOCK_FINETUNING_TASK
from ..runner import CONFIG_DIR
from ..techniques.tuners.registry import METHODS as TUNER_METHODS
from .rehearsal import refuse_used_output_folder
from .timing import machine_description, text_table

PRUNING_CONFIGS = Path(USER_DIR) / "techniques" / "iterative_pruning" / "configs"
"""Where iterative pruning ships its config groups (iterative_pruning/, rewinding/)."""

REPORT_NAME = "gpu_check.json"
REFERENCE = "stock"
LANGUAGES = ("aa", "bb")
"""The multilingual modes' languages; the single-language modes train on the first."""
ALPHABETS = {"aa": "abcdefghijklmnopqrstuvwxyz", "bb": "abcdefghijklm"}
"""Each language's letters: different dictionaries, so the per-language output layers differ in size."""
VALID_UTTERANCES = 2
TEST_UTTERANCES = 2
SPARE_BATCHES = 6
"""Training batches beyond one per update, so that updates skipped for fp16 overflow do not end
the epoch (an epoch's end starts new data loader workers inside the timed updates)."""
LETTERS_PER_SECOND = 12
FIXED_MASK_SPARSITY = 0.9
LANGUAGE_MASK_SPARSITY = 0.5
DECODE_AND_EXPORT_SECONDS = 30.0
"""What the budget reserves per trained mode for its decode and export (run several at a time),
before it starts another training."""
GIB = 1024 ** 3


@dataclass(frozen=True)
class GpuCheckSettings:
    """One check: where it writes, the model's shape, the data, the updates and the precision.
    `full` is the GPU check, `dry` the CPU dry mode."""

    out_dir: str
    dry_run: bool = False
    layers: int = 24
    width: int = 1024
    ffn: int = 4096
    heads: int = 16
    extractor_channels: Optional[int] = None
    """the channels of each of the feature extractor's 7 convolutions (None: XLS-R's, 512)"""
    updates: int = 20
    utterance_seconds: float = 10.0
    utterances_per_batch: int = 8
    """with the shipped config's max_tokens (1,280,000 samples: 80 s of audio) a batch of this many
    utterances of `utterance_seconds`"""
    modes: Tuple[str, ...] = ()
    """() means every mode; the reference always runs, first"""
    budget_s: Optional[float] = 480.0
    """no training starts once it and the decodes and exports still to come would end past this
    (None: no budget)"""
    parallel: int = 4
    """decodes and exports at a time"""
    trainings_at_a_time: int = 1
    """1 on the GPU, whose speed and memory each training measures; 2 in the dry mode, whose
    timings mean nothing, so that it fits a test suite on 2 cores"""
    seed: int = 0

    def __post_init__(self):
        """Absolute, because fairseq runs in Hydra's run folder: a relative path would name
        another place there."""
        object.__setattr__(self, "out_dir", str(Path(self.out_dir).resolve()))  # a frozen dataclass

    @classmethod
    def full(cls, out_dir, modes=(), budget_s=None):
        return cls(out_dir, modes=tuple(modes), budget_s=480.0 if budget_s is None else budget_s)

    @classmethod
    def dry(cls, out_dir, modes=(), budget_s=None):
        """The narrowest encoder the shipped config's channel masking accepts (width x
        mask_channel_prob must reach mask_channel_length), one layer, a feature extractor of 64
        channels instead of 512 (the same convolutions and frames; at 512 they took a good part of
        each training's CPU time), half-second utterances, and no budget unless one is given: the
        dry mode checks that every mode runs."""
        return cls(out_dir, dry_run=True, layers=1, width=256, ffn=512, heads=4, extractor_channels=64, updates=2,
                   utterance_seconds=0.5, utterances_per_batch=4, modes=tuple(modes), budget_s=budget_s, parallel=2,
                   trainings_at_a_time=2)

    def cpu_threads(self, processes_at_a_time: int) -> Optional[int]:
        """CPU threads for each of `processes_at_a_time` fairseq commands running side by side: in
        the dry mode the cores shared out between them (two commands each using every core spend
        a third or more of their CPU time waiting on each other's threads: seen on 2 cores); on the GPU
        None, the environment's."""
        if not self.dry_run:
            return None
        return max(1, (os.cpu_count() or 1) // processes_at_a_time)

    @property
    def fp16(self) -> bool:
        return not self.dry_run

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def warmup_updates(self) -> int:
        return max(1, self.updates // 4)

    @property
    def train_utterances(self) -> int:
        """One batch per update and spares on the GPU; one batch (an epoch per update) in the dry mode."""
        return (1 if self.dry_run else self.updates + SPARE_BATCHES) * self.utterances_per_batch

    def selected_modes(self) -> List[str]:
        wanted = self.modes or tuple(MODES)
        return [REFERENCE] + [name for name in MODES if name in wanted and name != REFERENCE]

    def describe(self) -> str:
        extractor = ("XLS-R feature extractor" if self.extractor_channels is None
                     else f"XLS-R feature extractor narrowed to {self.extractor_channels} channels")
        return (f"{self.layers} layers, width {self.width}, FFN {self.ffn}, {self.heads} heads, {extractor}; "
                f"{'fp16' if self.fp16 else 'fp32'} on {self.device}, {self.updates} updates per mode, "
                f"batches of {self.utterances_per_batch} x {self.utterance_seconds:g} s")

    def check(self) -> None:
        """Refuses bad settings, and a missing fairseq command, before anything is written."""
        from ..runner import fairseq_command

        for command in ("fairseq-hydra-train", "fairseq-generate"):
            fairseq_command(command)  # RunError, a RuntimeError, names the command
        unknown = [name for name in self.modes if name not in MODES]
        if unknown:
            raise ValueError(f"--modes: unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"--budget-s must be positive, got {self.budget_s:g}")
        refuse_used_output_folder(self.out_dir, "the check")


class CheckFiles:
    """Every path of one check, under its output folder."""

    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self.audio = self.out / "audio"
        self.data = self.out / "data"
        self.single_language = self.data / LANGUAGES[0]
        self.pretrained = self.out / "pretrained.pt"
        self.fixed_mask = self.out / "fixed.mask"
        self.report = self.out / REPORT_NAME

    def language_mask(self, language) -> Path:
        return self.out / f"language-{language}.mask"

    def run(self, mode) -> Path:
        return self.out / "runs" / mode

    def checkpoint(self, mode) -> Path:
        return self.run(mode) / "checkpoint_last.pt"

    def exported(self, mode) -> Path:
        return self.run(mode) / "exported.pt"


# ------------------------------------------------------------------------------------- the modes


def _pruning_overrides(settings: GpuCheckSettings) -> List[str]:
    """The shipped iterative-pruning schedule (fraction, target) squeezed into the run: the
    interval that ends its last event within the updates, or, where even one update per event
    is too few, one event per update to the sparsity that many events reach."""
    from ..techniques.iterative_pruning.schedule import PruningSchedule

    model = _shipped_yaml("iterative_pruning/xlsr_300m", PRUNING_CONFIGS)["model"]
    fraction, target = model["pruning_fraction"], model["pruning_target_sparsity"]
    events = PruningSchedule(1, fraction, target).events
    if settings.updates >= events:
        return [f"model.pruning_interval={settings.updates // events}"]
    reachable = round(1.0 - (1.0 - fraction) ** settings.updates, 6)
    return ["model.pruning_interval=1", f"model.pruning_target_sparsity={reachable}"]


def _rewinding_overrides(settings: GpuCheckSettings) -> List[str]:
    """subnets_tri_stage's phases within one pruning level, in the shipped proportions, each at
    least one update where the level is long enough (the decay, which stock tri_stage divides by,
    always)."""
    interval = int(_pruning_overrides(settings)[0].split("=")[1])
    shipped = _shipped_yaml("rewinding/xlsr_300m", PRUNING_CONFIGS)["lr_scheduler"]
    total = shipped["warmup_steps"] + shipped["hold_steps"] + shipped["decay_steps"]
    if interval >= 3:
        warmup = max(1, round(interval * shipped["warmup_steps"] / total))
        decay = max(1, round(interval * shipped["decay_steps"] / total))
    else:
        warmup, decay = 0, interval
    return [*_pruning_overrides(settings), f"lr_scheduler.warmup_steps={warmup}",
            f"lr_scheduler.hold_steps={interval - warmup - decay}", f"lr_scheduler.decay_steps={decay}"]


def _adalora_overrides(settings: GpuCheckSettings) -> List[str]:
    """AdaLoRA's budget schedule in the shipped proportions of the run (warm-up 1/5, final phase
    3/10, masking every tenth of the run), so that the budget shrinks within it."""
    updates = settings.updates
    return [f"model.tuner_warmup_updates={updates // 5}", f"model.tuner_final_updates={updates * 3 // 10}",
            f"model.tuner_interval={max(1, updates // 10)}"]


def _language_overrides(settings: GpuCheckSettings) -> List[str]:
    return [f"task.languages=[{','.join(LANGUAGES)}]"]


def _pathway_overrides(settings: GpuCheckSettings) -> List[str]:
    files = CheckFiles(settings.out_dir)
    masks = ",".join(f"{language}:{files.language_mask(language)}" for language in LANGUAGES)
    return [*_language_overrides(settings), f"model.language_mask_files=[{masks}]"]


def _no_overrides(settings: GpuCheckSettings) -> List[str]:
    return []


@dataclass(frozen=True)
class Mode:
    config: str
    """the shipped config (config/finetune/<config>.yaml) it trains with"""
    what: str
    overrides: Callable[[GpuCheckSettings], List[str]] = _no_overrides
    """what the mode adds to the common overrides (training_overrides)"""
    multilingual: bool = False
    masked: bool = False
    """its checkpoint holds masks whose pruned weights must be exactly 0"""


FIRST_TUNERS = ("lora", "s2lora", "adalora")
"""The tuners that run first, should the budget run out: the S2-LoRA paper's main comparison."""
TUNERS = FIRST_TUNERS + tuple(method for method in TUNER_METHODS if method not in FIRST_TUNERS)
"""Every registered tuner, each a mode with its shipped <method>_xlsr_300m config."""
MODES: Dict[str, Mode] = {
    REFERENCE: Mode("xlsr_300m", "stock fine-tuning: the stock wav2vec_ctc model, audio_finetuning task and ctc "
                    "criterion on the shipped config (the reference)",
                    lambda settings: [f"model._name={STOCK_CTC_MODEL}", f"task._name={STOCK_FINETUNING_TASK}", f"criterion._name={STOCK_CTC_CRITERION}"]),
    "plain": Mode("xlsr_300m", "plain fine-tuning through the plugin's model, task and criterion, no technique"),
    "fixed_masks": Mode("xlsr_300m", f"a fixed global-L1 mask at sparsity {FIXED_MASK_SPARSITY}",
                        lambda settings: [f"+model.mask_path={CheckFiles(settings.out_dir).fixed_mask}"],
                        masked=True),
    "learned_masks": Mode("learned_masks_xlsr_300m", "learned masks (S3-Router) on the frozen FFN weights", masked=True),
    "imp": Mode("imp_xlsr_300m", "iterative magnitude pruning to the shipped target within the run",
                _pruning_overrides, masked=True),
    "lth": Mode("lth_xlsr_300m", "lottery-ticket rewinding (IMP with rewinds, memory-efficient fp16)",
                _rewinding_overrides, masked=True),
    "multilingual": Mode("multilingual_xlsr_300m", "dense multilingual fine-tuning with per-language output "
                         "layers (the language_heads technique: no mode of its own)", _language_overrides,
                         multilingual=True),
    "pathways": Mode("pathways_xlsr_300m", f"pathways: one random mask per language at sparsity "
                     f"{LANGUAGE_MASK_SPARSITY} on every matrix", _pathway_overrides, multilingual=True, masked=True),
    **{tuner: Mode(f"{tuner}_xlsr_300m", f"the {tuner} tuner on the frozen encoder",
                   _adalora_overrides if tuner == "adalora" else _no_overrides) for tuner in TUNERS},
}
"""Every training mode, in the order they run (the most telling first, should the budget run out)."""


def _shipped_yaml(name, folder: Path = CONFIG_DIR / "finetune") -> Dict[str, object]:
    """config/finetune/NAME.yaml, or a technique's group file NAME.yaml in its configs folder."""
    import yaml

    return yaml.safe_load((folder / f"{name}.yaml").read_text())


def training_overrides(settings: GpuCheckSettings, mode: str) -> List[str]:
    """What the check changes in a mode's shipped XLS-R config, and why:
    - the paths, the update count, and one process (the shipped config asks for 4 GPUs);
    - `update_freq=1`: the shipped 5 batches per update would make 20 updates take minutes; the
      peak memory is that of one batch either way, and the ratios compare like with like;
    - no encoder freeze (the shipped config freezes it for 10,000 updates, so 20 would train the
      output layer alone);
    - one validation, at the end (the shipped config waits 10,000 updates): it exercises the
      plugin's validation on the device and costs little;
    - a log line after every update (speed and memory are read from them) and no optimizer state
      in the checkpoints (see the module docstring);
    - on the CPU (the dry mode) no fp16, and no data loader workers (6 processes started for every
      epoch and validation would take most of a 2-update run on a small machine)."""
    files = CheckFiles(settings.out_dir)
    device = (["common.cpu=true", "common.fp16=false", "dataset.num_workers=0"] if settings.dry_run
              else ["common.cpu=false", "common.fp16=true"])
    data = files.data if MODES[mode].multilingual else files.single_language
    return [
        f"common.user_dir={USER_DIR}", f"task.data={data}", f"model.w2v_path={files.pretrained}",
        f"checkpoint.save_dir={files.run(mode)}", f"optimization.max_update={settings.updates}",
        "distributed_training.distributed_world_size=1", "optimization.update_freq=[1]",
        "model.freeze_finetune_updates=0", "dataset.validate_after_updates=0", "dataset.validate_interval=1000",
        "common.log_interval=1", "checkpoint.no_save_optimizer_state=true", *device,
        *MODES[mode].overrides(settings),
    ]


# ------------------------------------------------------------------------------------- the setup


def write_data(settings: GpuCheckSettings) -> Dict[str, object]:
    """Random-noise utterances of equal length (so every batch has the same shape) with random
    transcripts, written once and listed by a manifest folder per language: the single-language
    modes train on the first language's, the multilingual ones on both."""
    import numpy as np

    from ..data.audio import SAMPLE_RATE, write_wav_atomic
    from ..data.manifest import ManifestEntry, write_letter_dictionary, write_split

    files = CheckFiles(settings.out_dir)
    rng = np.random.default_rng(settings.seed)
    samples = int(settings.utterance_seconds * SAMPLE_RATE)
    counts = {"train": settings.train_utterances, "valid": VALID_UTTERANCES, "test": TEST_UTTERANCES}
    paths = {split: [files.audio / split / f"{index:04d}.wav" for index in range(count)]
             for split, count in counts.items()}
    for split_paths in paths.values():
        for path in split_paths:
            write_wav_atomic(path, (rng.standard_normal(samples) * 3000).clip(-32768, 32767).astype(np.int16))
    letters = max(2, int(settings.utterance_seconds * LETTERS_PER_SECOND))

    def transcript(alphabet):
        words = []
        while sum(len(word) + 1 for word in words) < letters:
            words.append("".join(rng.choice(alphabet, int(rng.integers(2, 8)))))
        return " ".join(words)

    for language in LANGUAGES:
        alphabet = list(ALPHABETS[language])
        transcripts = {split: [transcript(alphabet) for _ in split_paths] for split, split_paths in paths.items()}
        folder = files.data / language
        for split, split_paths in paths.items():
            write_split(folder, split, [ManifestEntry(path, samples, words)
                                        for path, words in zip(split_paths, transcripts[split])],
                        audio_root=files.audio)
        write_letter_dictionary(folder, transcripts)
    return {**{f"{split}_utterances": count for split, count in counts.items()},
            "seconds_each": settings.utterance_seconds}


def build_pretrained(settings: GpuCheckSettings) -> Dict[str, object]:
    """The random pretraining checkpoint with XLS-R's architecture (its feature extractor narrowed
    where the settings say), normalizing audio as the shipped config's task does (stock
    fine-tuning refuses a mismatch)."""
    import torch

    from ..benchmarks.untrained import (
        XLSR_ARCHITECTURE, CtcModelSize, narrowed_feature_extractor, save_untrained_pretraining_checkpoint,
    )

    torch.manual_seed(settings.seed)
    files = CheckFiles(settings.out_dir)
    size = CtcModelSize(settings.layers, settings.width, settings.ffn, settings.heads)
    normalize = bool(_shipped_yaml("xlsr_300m")["task"]["normalize"])
    architecture = dict(XLSR_ARCHITECTURE)
    if settings.extractor_channels is not None:
        architecture["conv_feature_layers"] = narrowed_feature_extractor(settings.extractor_channels)
    parameters = save_untrained_pretraining_checkpoint(files.pretrained, size, normalize, **architecture)
    return {"parameters": parameters, "file_gb": round(files.pretrained.stat().st_size / 1e9, 3)}


def write_masks(settings: GpuCheckSettings, modes: Sequence[str]) -> Dict[str, object]:
    """The fixed-mask mode's global-L1 mask and the pathway mode's random per-language masks, by
    the back end of `fairseq-subnets prune`."""
    from ..plugin.tools.prune import prune_checkpoint

    files = CheckFiles(settings.out_dir)
    written = {}
    if "fixed_masks" in modes:
        prune_checkpoint(str(files.pretrained), str(files.fixed_mask), "global-l1", FIXED_MASK_SPARSITY)
        written["fixed_masks"] = f"global-l1 {FIXED_MASK_SPARSITY}"
    if "pathways" in modes:
        for seed, language in enumerate(LANGUAGES, 1):
            prune_checkpoint(str(files.pretrained), str(files.language_mask(language)), "random",
                             LANGUAGE_MASK_SPARSITY, seed=seed)
        written["pathways"] = f"random {LANGUAGE_MASK_SPARSITY}, one per language"
    return written


# --------------------------------------------------------------------------- reading the training


def train_inner_records(log_text: str) -> List[Dict[str, object]]:
    """The JSON object of every `train_inner` line fairseq logged (common.log_format=json)."""
    records = []
    for line in log_text.splitlines():
        position = line.find("train_inner")
        start = line.find("{", position) if position >= 0 else -1
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(record, dict) and "num_updates" in record:
            records.append(record)
    return records


def training_facts(log_text: str, warmup_updates: int, total_memory_gib: Optional[float]) -> Dict[str, object]:
    """Updates done, the median seconds per timed update (from `ups`, see the module docstring) and
    the mean (which holds what the median leaves out: pruning events, AdaLoRA's maskings, overflow
    steps), fp16 overflow steps, the trained values, and the peak allocated GPU memory (from
    `gb_free`; None on the CPU)."""
    records = train_inner_records(log_text)
    seconds = [1.0 / float(record["ups"]) for record in records
               if int(float(record["num_updates"])) > warmup_updates and float(record.get("ups", 0)) > 0]
    free = [float(record["gb_free"]) for record in records if "gb_free" in record]
    trained = re.search(r"num\. trained: ([\d,]+)", log_text)
    median = statistics.median(seconds) if seconds else None
    return {
        "updates": int(float(records[-1]["num_updates"])) if records else 0,
        "timed_updates": len(seconds),
        "seconds_per_update": round(median, 4) if median else None,
        "updates_per_second": round(1.0 / median, 3) if median else None,
        "mean_seconds_per_update": round(statistics.mean(seconds), 4) if seconds else None,
        "overflow_steps": log_text.count("gradient overflow detected"),
        "final_loss_scale": float(records[-1]["loss_scale"]) if records and "loss_scale" in records[-1] else None,
        "trained_values": int(trained.group(1).replace(",", "")) if trained else None,
        "peak_gpu_memory_gib": (round(total_memory_gib - min(free), 1)
                                if free and total_memory_gib is not None else None),
    }


# ------------------------------------------------------------------------------ pruned weights = 0


def pruned_weights_check(checkpoint: Path, exported: Path, languages: Sequence[Optional[str]],
                         exported_language: Optional[str]) -> Dict[str, object]:
    """Reads the trained checkpoint (weights only), takes its masks and its effective weights for
    each language, and counts pruned entries that are not exactly 0 there and in the export (of
    `exported_language`), and non-finite effective weights of masked matrices.

    The effective weights are the weight stacks of the stored state evaluated on the CPU in the
    stored dtype: stacks rebuilt from a state dict hold their buffers on the CPU, and an entry's
    product with its mask is the same on any device. fairseq stores fp16 weights as fp32 (its
    move_to_cpu casts them, exactly), so the values are those fp16 training left; what fp16 can
    break is those values (an overflow to inf gives inf x 0 = NaN), which this reads."""
    import torch

    from ..core.parametrize import bake_state_dict, masks_from_state_dict
    from ..plugin.formats.checkpoints import load_fairseq_checkpoint
    from ..techniques.extension import W2V_PREFIX

    state = load_fairseq_checkpoint(checkpoint)["model"]
    export_state = load_fairseq_checkpoint(exported)["model"]
    counts = {"masked_matrices": 0, "pruned_weights": 0, "nonzero_pruned_in_checkpoint": 0,
              "nonzero_pruned_in_export": 0, "nonfinite_effective_weights": 0}
    dtypes = set()
    with torch.no_grad():
        for language in languages:
            masks = masks_from_state_dict(state, prefix=W2V_PREFIX, language=language)
            effective = bake_state_dict(state, language=language)
            for name, kept in masks.items():
                weight, pruned = effective[W2V_PREFIX + name], ~kept
                dtypes.add(str(weight.dtype).replace("torch.", ""))
                counts["masked_matrices"] += 1
                counts["pruned_weights"] += int(pruned.sum())
                counts["nonzero_pruned_in_checkpoint"] += int(torch.count_nonzero(weight[pruned]))
                counts["nonfinite_effective_weights"] += int((~torch.isfinite(weight)).sum())
                if language == exported_language:
                    counts["nonzero_pruned_in_export"] += int(
                        torch.count_nonzero(export_state[W2V_PREFIX + name][pruned]))
    exactly_zero = (counts["pruned_weights"] > 0 and counts["nonzero_pruned_in_checkpoint"] == 0
                    and counts["nonzero_pruned_in_export"] == 0)
    return {**counts, "effective_dtype": ",".join(sorted(dtypes)),
            "languages": [language for language in languages if language is not None],
            "exactly_zero": exactly_zero}


# ---------------------------------------------------------------------------------------- the run


class Report:
    """The JSON report, rewritten atomically after every change (several threads write it)."""

    def __init__(self, path: Path, result: Dict[str, object]):
        self.path, self.result, self.lock = path, result, threading.Lock()
        self.save()

    def update(self, mode: str, **facts) -> None:
        with self.lock:
            self.result["modes"][mode].update(facts)
            self._write()

    def save(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        write_atomically(self.path, (json.dumps(self.result, indent=2, allow_nan=False) + "\n").encode())


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _total_memory_gib(settings: GpuCheckSettings) -> Optional[float]:
    """The device's memory as fairseq counts it (CudaEnvironment: bytes / 1024^3)."""
    if settings.dry_run:
        return None
    import torch

    return torch.cuda.get_device_properties(0).total_memory / GIB


def _device_description(settings: GpuCheckSettings) -> Optional[Dict[str, object]]:
    if settings.dry_run:
        return None
    import torch

    properties = torch.cuda.get_device_properties(0)
    return {"name": properties.name, "total_memory_gib": round(properties.total_memory / GIB, 2),
            "capability": f"{properties.major}.{properties.minor}", "torch": torch.__version__,
            "cuda": torch.version.cuda}


def train_mode(settings: GpuCheckSettings, mode: str, report: Report, total_memory_gib: Optional[float]) -> bool:
    """Trains one mode through stock fairseq-hydra-train; records its facts; True if it trained."""
    from ..runner import hydra_train

    files = CheckFiles(settings.out_dir)
    log = files.run(mode) / "train.log"
    started = time.monotonic()
    report.update(mode, status="training", log=str(log))
    try:
        text = hydra_train(MODES[mode].config, training_overrides(settings, mode), log,
                           threads=settings.cpu_threads(settings.trainings_at_a_time))
    except Exception as error:  # recorded per mode: the next mode still runs
        report.update(mode, status="failed", failed_step="train", error=_error_text(error),
                      train_wall_s=round(time.monotonic() - started, 1))
        _remove_checkpoints(files.run(mode))  # fairseq leaves a crash.pt
        return False
    facts = training_facts(text, settings.warmup_updates, total_memory_gib)
    (files.run(mode) / "checkpoint_best.pt").unlink(missing_ok=True)  # a copy of checkpoint_last.pt: disk space
    report.update(mode, status="trained", train_wall_s=round(time.monotonic() - started, 1), training=facts)
    if facts["updates"] != settings.updates or facts["updates_per_second"] is None:
        report.update(mode, status="failed", failed_step="train",
                      error=f"trained {facts['updates']} of {settings.updates} updates, {facts['timed_updates']} timed")
        return False
    return True


def decode_and_export(settings: GpuCheckSettings, mode: str, report: Report) -> None:
    """Decodes the test utterances with stock fairseq-generate (on the GPU, at the model's fp32:
    stock fairseq-generate does not cast its input to fp16), exports, checks pruned weights, then
    removes the checkpoints and the export."""
    from ..plugin.tools.export import export_plain_checkpoint
    from ..runner import generate

    files = CheckFiles(settings.out_dir)
    spec = MODES[mode]
    checkpoint = files.checkpoint(mode)
    language = LANGUAGES[0] if spec.multilingual else None
    step = "decode"
    try:
        started = time.monotonic()
        if spec.multilingual:
            decoded = generate(files.data, checkpoint, "test", files.run(mode) / "decode", cpu=settings.dry_run,
                               threads=settings.cpu_threads(settings.parallel),
                               task_args=("--task", PLUGIN_MULTILINGUAL_TASK, "--languages",
                                          ",".join(LANGUAGES), "--decode-language", language))
        else:
            decoded = generate(files.single_language, checkpoint, "test", files.run(mode) / "decode",
                               cpu=settings.dry_run, threads=settings.cpu_threads(settings.parallel))
        report.update(mode, decode={"utterances": decoded.hypotheses, "cer": round(decoded.cer, 1),
                                    "language": language, "wall_s": round(time.monotonic() - started, 1)})
        step = "export"
        started = time.monotonic()
        export_plain_checkpoint(str(checkpoint), str(files.exported(mode)), language=language)
        report.update(mode, export={"file_gb": round(files.exported(mode).stat().st_size / 1e9, 3),
                                    "language": language, "wall_s": round(time.monotonic() - started, 1)})
        if spec.masked:
            step = "pruned weights"
            languages = LANGUAGES if spec.multilingual else (None,)
            report.update(mode, pruned_weights=pruned_weights_check(checkpoint, files.exported(mode), languages,
                                                                    language))
            if not report.result["modes"][mode]["pruned_weights"]["exactly_zero"]:
                raise RuntimeError("a pruned effective weight is not exactly 0, or the checkpoint holds no mask")
        report.update(mode, status="ok")
    except Exception as error:  # recorded per mode: the other modes still run
        report.update(mode, status="failed", failed_step=step, error=_error_text(error))
    finally:
        _remove_checkpoints(files.run(mode))


def _remove_checkpoints(folder: Path) -> None:
    """At XLS-R size every mode's checkpoints together would fill the disk; the logs stay."""
    for path in folder.glob("*.pt"):
        path.unlink()


def train_every_mode(settings: GpuCheckSettings, modes: Sequence[str], report: Report,
                     total_memory_gib: Optional[float], deadline: float, say: Callable[[str], None]) -> List[str]:
    """Trains the modes in order, `trainings_at_a_time` at once, and returns those that trained.
    A mode is skipped once its training, at the mean time of those done, and the decodes and
    exports still to come would end past `deadline`."""
    lock = threading.Lock()
    trained: List[str] = []
    seconds: List[float] = []
    started_count = [0]

    def train(mode):
        with lock:
            expected = statistics.mean(seconds) if seconds else 0.0
            reserve = math.ceil((started_count[0] + 1) / settings.parallel) * DECODE_AND_EXPORT_SECONDS
            if seconds and time.monotonic() + expected + reserve > deadline:
                report.update(mode, status="skipped", error=f"the {settings.budget_s:g} s budget would run out "
                                                             f"(--budget-s)")
                say(f"{mode}: skipped (budget)")
                return
            started_count[0] += 1
        say(f"{mode}: training ...")
        mode_started = time.monotonic()
        succeeded = train_mode(settings, mode, report, total_memory_gib)
        with lock:
            seconds.append(time.monotonic() - mode_started)
            if succeeded:
                trained.append(mode)
            say(f"{mode}: {report.result['modes'][mode]['status']} in {seconds[-1]:.1f} s")

    with ThreadPoolExecutor(settings.trainings_at_a_time) as pool:
        list(pool.map(train, modes))
    return trained


def run_gpu_check(settings: GpuCheckSettings, say: Callable[[str], None] = print) -> Dict[str, object]:
    """Sets up, trains every selected mode (in turn on the GPU), then decodes, exports and checks
    them several at a time; writes OUT/gpu_check.json after every step and returns it."""
    settings.check()
    started = time.monotonic()
    deadline = started + settings.budget_s if settings.budget_s is not None else math.inf
    files = CheckFiles(settings.out_dir)
    files.out.mkdir(parents=True, exist_ok=True)
    modes = settings.selected_modes()
    total_memory_gib = _total_memory_gib(settings)
    result: Dict[str, object] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(), "device": _device_description(settings), "dry_run": settings.dry_run,
        "settings": asdict(settings), "shape": settings.describe(), "reference": REFERENCE, "report": str(files.report),
        "setup": {},
        "modes": {mode: {"status": "waiting", "config": MODES[mode].config, "what": MODES[mode].what,
                         "overrides": training_overrides(settings, mode)} for mode in modes},
    }
    report = Report(files.report, result)
    for name, step in (("data", lambda: write_data(settings)), ("pretrained", lambda: build_pretrained(settings)),
                       ("masks", lambda: write_masks(settings, modes))):
        say(f"setup: {name} ...")
        step_started = time.monotonic()
        facts = step()
        with report.lock:
            result["setup"][name] = {**facts, "wall_s": round(time.monotonic() - step_started, 1)}
        report.save()

    trained = train_every_mode(settings, modes, report, total_memory_gib, deadline, say)

    say(f"decoding and exporting {len(trained)} modes, {settings.parallel} at a time ...")
    with ThreadPoolExecutor(settings.parallel) as pool:
        list(pool.map(lambda mode: decode_and_export(settings, mode, report), trained))

    with report.lock:
        reference = result["modes"][REFERENCE].get("training", {}).get("updates_per_second")
        for facts in result["modes"].values():
            speed = facts.get("training", {}).get("updates_per_second")
            facts["speed_ratio"] = round(speed / reference, 3) if speed and reference else None
        result["wall_s"] = round(time.monotonic() - started, 1)
        result["all_ok"] = all(facts["status"] == "ok" for facts in result["modes"].values())
    report.save()
    return result


def format_gpu_check_report(result: Mapping[str, object]) -> str:
    """The check as a plain-text table: one row per mode."""
    rows = [("mode", "status", "updates/s", f"vs {result['reference']}", "peak GiB", "decode", "export GB",
             "pruned = 0")]
    for mode, facts in result["modes"].items():
        training = facts.get("training", {})
        zeros = facts.get("pruned_weights")
        rows.append((
            mode, facts["status"] if facts["status"] != "failed" else f"failed ({facts.get('failed_step')})",
            _cell(training.get("updates_per_second")), _cell(facts.get("speed_ratio"), "{:.3f}x"),
            _cell(training.get("peak_gpu_memory_gib"), "{:.1f}"),
            f"{facts['decode']['utterances']} utt" if "decode" in facts else "-",
            _cell(facts.get("export", {}).get("file_gb")),
            "-" if zeros is None else f"{'yes' if zeros['exactly_zero'] else 'NO'} ({zeros['pruned_weights']:,})"))
    lines = [f"{result['date']}  {result['machine']}", result["shape"]]
    if result.get("device"):
        lines.append(f"device: {result['device']['name']}, {result['device']['total_memory_gib']} GiB, "
                     f"torch {result['device']['torch']}, CUDA {result['device']['cuda']}")
    lines += text_table(rows)
    problems = [f"{mode}: {facts['error']}" for mode, facts in result["modes"].items() if facts.get("error")]
    lines += problems
    if "wall_s" in result:
        lines.append(f"total {result['wall_s']:.1f} s; {'every mode ok' if result['all_ok'] else 'NOT every mode ok'}; "
                     f"report {result['report']}")
    return "\n".join(lines)


def _cell(value, template="{}") -> str:
    return "-" if value is None else template.format(value)
