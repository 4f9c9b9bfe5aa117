"""Is multilingual data loading ever the bottleneck? The time a training step waits for its next
monolingual batch, against the training step itself.

Builds the `subnets_multilingual_finetuning` task on a manifest folder (one folder per language),
iterates its training epoch as fairseq's trainer does (the task's language-block batch iterator
with `num_workers=0`, so audio is read and collated in the training process: the worst case), and
for each batch times fetching it (measured: "data wait") and one training step of a
`subnets_wav2vec_ctc` model on it (reference: "training step": forward, CTC loss through
`subnets_ctc`, backward, Adam), taking turns. The report gives the ratio of medians and the
data-wait share of the whole loop, sum(wait) / sum(wait + step).
"""
import datetime
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Tuple

import torch
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import OmegaConf

from ..component_names import PLUGIN_CTC_MODEL
from ..plugin.components.criterions import SubnetsCtcCriterion, SubnetsCtcCriterionConfig
from ..plugin.components.tasks import SubnetsMultilingualFinetuningConfig, SubnetsMultilingualFinetuningTask
from .timing import compare, ratio_cell, text_table
from .train_step import make_optimizer
from .untrained import CtcModelSize, ctc_model_config

WAIT_SHARE_TARGET = 0.10
"""Most of the loop's time that waiting for data may take: beyond it, loading would be a bottleneck."""


@dataclass(frozen=True)
class DataWaitBenchSettings:
    data: str
    languages: Tuple[str, ...]
    layers: int = 12
    width: int = 768
    ffn: int = 3072
    max_tokens: int = 400_000
    """the shipped tiny configs' batch size (25 s of 16 kHz audio)"""
    steps: int = 8
    warmup: int = 1
    threads: int = 1
    seed: int = 1
    lr: float = 5e-5
    alpha: float = 0.5

    def check(self) -> None:
        if len(self.languages) < 1:
            raise ValueError("languages: name at least one")
        for name in ("layers", "width", "ffn", "max_tokens", "steps", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.warmup < 0:
            raise ValueError("warmup must be at least 0")


def _task(settings: DataWaitBenchSettings) -> SubnetsMultilingualFinetuningTask:
    """The task as fairseq-hydra-train sets it up: inside a full config, whose common, dataset and
    optimization sections its interpolated keys (seed, update_freq, ...) read."""
    root = OmegaConf.structured(FairseqConfig())
    root.common.seed = settings.seed
    root.task = OmegaConf.structured(SubnetsMultilingualFinetuningConfig(
        data=settings.data, languages=list(settings.languages), output_layers="shared", labels="ltr",
        normalize=False, language_sampling_alpha=settings.alpha))
    task = SubnetsMultilingualFinetuningTask.setup_task(root.task)
    task.load_dataset("train")
    return task


def _batches(task, settings: DataWaitBenchSettings):
    """Training batches, epoch after epoch, as the trainer draws them."""
    epoch = 1
    while True:
        iterator = task.get_batch_iterator(task.dataset("train"), max_tokens=settings.max_tokens, seed=settings.seed,
                                           epoch=epoch, disable_iterator_cache=True)
        yield from iterator.next_epoch_itr(shuffle=True)
        epoch += 1


def run_data_wait_benchmark(settings: DataWaitBenchSettings, say: Callable[[str], None] = print) -> Dict[str, object]:
    settings.check()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _run(settings, say)
    finally:
        torch.set_num_threads(previous_threads)


def _run(settings: DataWaitBenchSettings, say) -> Dict[str, object]:
    say(f"loading {', '.join(settings.languages)} from {settings.data} ...")
    task = _task(settings)
    size = CtcModelSize(settings.layers, settings.width, settings.ffn, vocab=len(task.target_dictionary))
    model_cfg = ctc_model_config(size)
    model_cfg._name = PLUGIN_CTC_MODEL
    torch.manual_seed(settings.seed)
    model = task.build_model(model_cfg).train()
    criterion = SubnetsCtcCriterion(OmegaConf.structured(SubnetsCtcCriterionConfig(
        sentence_avg=True, zero_infinity=True)), task)
    optimizer = make_optimizer(model, settings.lr)
    batches = _batches(task, settings)
    seconds: Dict[str, List[float]] = {"training step": [], "data wait": []}
    languages: List[str] = []
    say(f"{settings.warmup} warm-up + {settings.steps} timed batches ({size.describe()}) ...")
    for index in range(settings.warmup + settings.steps):
        start = time.perf_counter()
        sample = next(batches)
        fetched = time.perf_counter()
        with task.using_language(sample["net_input"]["language"]):
            optimizer.zero_grad(set_to_none=True)
            loss, _, _ = criterion(model, sample)
            loss.backward()
            optimizer.step()
        stepped = time.perf_counter()
        if index >= settings.warmup:
            seconds["data wait"].append(fetched - start)
            seconds["training step"].append(stepped - fetched)
            languages.append(sample["net_input"]["language"])
    wait, step = sum(seconds["data wait"]), sum(seconds["training step"])
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "settings": {**asdict(settings), "languages": list(settings.languages)}, "model": size.describe(),
            "comparison": compare(seconds, "training step", "data wait"),
            "data_wait_share": wait / (wait + step), "batch_languages": languages}


def format_data_wait_report(result: Mapping[str, object]) -> str:
    row = result["comparison"]
    rows = [("", "reference", "reference (s)", "measured (s)", "ratio [per-round range]"),
            ("waiting for a monolingual batch", "training step", f"{row['reference_median_s']:.3f}",
             f"{row['measured_median_s']:.3f}", ratio_cell(row, "information"))]
    settings = result["settings"]
    counts = {language: result["batch_languages"].count(language) for language in settings["languages"]}
    return "\n".join([
        f"{result['date']}  {result['model']}; max_tokens {settings['max_tokens']}; "
        f"{settings['steps']} timed batches ({', '.join(f'{k} {v}' for k, v in counts.items())})",
        *text_table(rows),
        f"data-wait share of the loop: {result['data_wait_share']:.4f} (target <= {WAIT_SHARE_TARGET:.2f}: "
        f"{'met' if result['data_wait_share'] <= WAIT_SHARE_TARGET else 'missed'})",
    ])
