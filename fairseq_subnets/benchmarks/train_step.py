"""Speed of masked training and of decoding a baked model, against the same model without masks.

Everything runs in one process on one batch of random audio, with the real plugin model
(`subnets_wav2vec_ctc`, built from a wav2vec2 config instead of a pretrained checkpoint):

* training step (forward, CTC loss, backward, a step of fairseq's Adam): reference = the model
  without masks; measured = the same weights with a fixed global-L1 mask on every prunable encoder
  matrix, fixed by `SubnetsWav2VecCtc.apply_mask_file` exactly as `+model.mask_path` does (so the
  optimizer holds only the kept weights). After the masked steps every pruned effective weight
  must still be exactly zero. The same mask with dense storage (`+model.mask_storage=dense`: full
  weights, a mask that may change in place) is timed against the same reference.
* language switching: two models with per-language masks on every prunable matrix (the global-L1
  mask and a random mask of the same sparsity, one per "language"); reference = one that trains one
  language throughout, measured = one whose active language changes at every step, as monolingual
  batches of a multilingual run do.
* decoding (eval, no_grad forward): reference = the stock fairseq `Wav2VecCtc` holding the baked
  state dict of the masked model (what a checkpoint written by `fairseq-subnets export` holds);
  measured = a copy of the masked model baked by `bake_module`. Their outputs must be identical.
  The masked model before baking is timed as well, for information.

Each row of the report is a `Comparison` in `COMPARISONS`: a measured model against a named
reference model of the same phase. The models of one phase run in turn and are compared by their
median seconds per repetition (see `timing`). A new row is a model added to its phase in `_run`
and a `Comparison` naming it.
"""
import datetime
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from fairseq.optim.adam import Adam as FairseqAdamImpl

from ..core.parametrize import apply_language_masks, bake_module, bake_state_dict
from ..core.pruning import global_l1_masks, random_masks
from ..core.targets import select_weights
from ..core.transforms import select_language
from ..plugin.models import W2V_PREFIX
from ..plugin.untrained import CtcModelSize, build_untrained_ctc_model, fix_masks_as_mask_path_does, rebuild_with_state
from .timing import compare, interleaved, machine_description, ratio_cell, text_table

SAMPLE_RATE = 16000
TRAIN_TARGET = 1.10
"""Most a masked training step (fixed or dense mask) may cost, relative to the same model without masks."""
SWITCH_TARGET = 1.02
"""Most a training step may cost when the active language mask changes at every step, relative to
one language throughout."""
LANGUAGES = ("first", "second")


@dataclass(frozen=True)
class StepBenchSettings:
    """What to build and how often to time it. The defaults are wav2vec2 BASE (12 layers, width
    768, FFN 3072, 12 heads, the stock convolutional feature extractor) fine-tuned with fairseq's
    CTC defaults (no dropout, frozen feature extractor), a batch of 2 x 4 s of 16 kHz audio."""

    layers: int = 12
    width: int = 768
    ffn: int = 3072
    heads: Optional[int] = None
    """attention heads; None: width // 64 (at least 1)"""
    batch: int = 2
    seconds: float = 4.0
    vocab: int = 32
    sparsity: float = 0.9
    train_steps: int = 8
    train_warmup: int = 1
    decode_steps: int = 10
    decode_warmup: int = 2
    threads: int = 1
    seed: int = 0
    lr: float = 5e-5

    @property
    def model_size(self) -> CtcModelSize:
        return CtcModelSize(self.layers, self.width, self.ffn, self.heads, self.vocab)

    @property
    def attention_heads(self) -> int:
        return self.model_size.attention_heads

    def describe(self) -> str:
        return f"{self.model_size.describe()}; batch {self.batch} x {self.seconds:g} s of {SAMPLE_RATE // 1000} kHz audio"

    def check(self) -> None:
        positive = {"layers": self.layers, "width": self.width, "ffn": self.ffn, "batch": self.batch,
                    "vocab": self.vocab - 1, "train_steps": self.train_steps, "decode_steps": self.decode_steps,
                    "threads": self.threads, "attention_heads": self.attention_heads}
        bad = [name for name, value in positive.items() if value < 1]
        bad += [name for name in ("train_warmup", "decode_warmup") if getattr(self, name) < 0]
        if bad:
            raise ValueError(f"{bad[0]} must be positive (vocab at least 2, warm-up at least 0)")
        if self.width % self.attention_heads:
            raise ValueError(f"width {self.width} is not a multiple of {self.attention_heads} attention heads")
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must lie in (0, 1), got {self.sparsity}")
        if self.seconds * SAMPLE_RATE < 800:
            raise ValueError(f"seconds: {self.seconds} s of audio is shorter than the feature extractor's receptive field")


@dataclass(frozen=True)
class Comparison:
    """One row of the report: `measured` against the named `reference`, both models of `phase`."""

    key: str
    """the row's key in the result"""
    label: str
    phase: str
    """"train" (training steps) or "decode" (eval forward passes)"""
    reference: str
    measured: str
    target: str


COMPARISONS = (
    Comparison("train", "training step, fixed mask", "train", "no mask", "fixed mask", f"<= {TRAIN_TARGET:.2f}"),
    Comparison("train_dense", "training step, dense mask", "train", "no mask", "dense mask", f"<= {TRAIN_TARGET:.2f}"),
    Comparison("train_switch", "training step, language switched every step", "train", "one language",
               "switching languages", f"<= {SWITCH_TARGET:.2f}"),
    Comparison("decode", "decoding, baked", "decode", "stock export", "baked", "1.00 within noise"),
    Comparison("decode_masked", "decoding, masked (not baked)", "decode", "stock export", "masked, not baked",
               "information"),
)


# ------------------------------------------------------------------------------------------ models


def prune_masks(model, sparsity: float):
    """The global-L1 mask set of every prunable encoder matrix, as `fairseq-subnets prune` finds it."""
    return global_l1_masks(select_weights(model.state_dict()), sparsity)


def _sparsity(masks) -> float:
    kept = sum(int(torch.count_nonzero(mask)) for mask in masks.values())
    return 1.0 - kept / sum(mask.numel() for mask in masks.values())


def _require(condition: bool, message: str) -> None:
    """An assertion that `python -O` does not remove."""
    if not condition:
        raise AssertionError(f"benchmark: {message}")


def _phase_models(models: Mapping[str, object], phase: str) -> Dict[str, object]:
    """The models the comparisons of `phase` name, each once, in the order the comparisons name them."""
    names = [name for row in COMPARISONS if row.phase == phase for name in (row.reference, row.measured)]
    return {name: models[name] for name in dict.fromkeys(names)}


def _compare_phase(result: Dict[str, object], seconds: Mapping[str, List[float]], phase: str) -> None:
    for row in COMPARISONS:
        if row.phase == phase:
            result[row.key] = compare(seconds, row.reference, row.measured)


def pruned_nonzero(model, masks: Mapping[str, torch.Tensor]) -> int:
    """How many pruned weights have a nonzero effective value (what the forward pass uses)."""
    count = 0
    with torch.no_grad():
        for name, mask in masks.items():
            weight = model.get_submodule(W2V_PREFIX + name[: -len(".weight")]).weight
            count += int(torch.count_nonzero(weight[~mask]))
    return count


# ---------------------------------------------------------------------------------------- stepping


@dataclass
class Batch:
    audio: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor


def make_batch(settings: StepBenchSettings, generator: torch.Generator) -> Batch:
    samples = int(round(settings.seconds * SAMPLE_RATE))
    audio = torch.randn(settings.batch, samples, generator=generator) * 0.1
    # ~12 characters per second of speech, but never more than CTC can align to the 50 Hz frames.
    length = max(1, min(int(settings.seconds * 12), samples // 320 // 2))
    targets = torch.randint(1, settings.vocab, (settings.batch, length), generator=generator)
    return Batch(audio, targets, torch.full((settings.batch,), length, dtype=torch.long))


def _ctc_loss(model, batch: Batch) -> torch.Tensor:
    net_output = model(source=batch.audio, padding_mask=None)
    log_probs = model.get_normalized_probs(net_output, log_probs=True)  # T x B x V
    frames = torch.full((log_probs.shape[1],), log_probs.shape[0], dtype=torch.long)
    return F.ctc_loss(log_probs, batch.targets, frames, batch.target_lengths, blank=0,
                      reduction="sum", zero_infinity=True)


def make_optimizer(model, lr: float) -> torch.optim.Optimizer:
    """The Adam that fairseq's `optimizer: adam` runs on a CPU (fairseq.optim.adam.Adam, decoupled
    weight decay, here 0), with the betas and eps of the wav2vec2 fine-tuning configs."""
    return FairseqAdamImpl(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)


def train_step(model, optimizer: torch.optim.Optimizer, batch: Batch) -> float:
    """One fine-tuning update: forward, CTC loss, backward, Adam step."""
    optimizer.zero_grad(set_to_none=True)
    loss = _ctc_loss(model, batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def decode_forward(model, batch: Batch) -> torch.Tensor:
    """The encoder output (T x B x V logits) of an eval-mode model, without autograd."""
    with torch.no_grad():
        return model(source=batch.audio, padding_mask=None)["encoder_out"]


# --------------------------------------------------------------------------------------- benchmark


def run_step_benchmark(settings: StepBenchSettings = StepBenchSettings(),
                       say: Callable[[str], None] = print) -> Dict[str, object]:
    """Runs every comparison of COMPARISONS and returns every measurement; raises AssertionError
    if a pruned weight becomes nonzero or baked and stock outputs differ."""
    settings.check()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            return _run(settings, say)
    finally:
        torch.set_num_threads(previous_threads)


def _run(settings: StepBenchSettings, say) -> Dict[str, object]:
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_description(f"{settings.threads} torch thread(s)"), "settings": asdict(settings),
              "shape": settings.describe()}
    batch = make_batch(settings, torch.Generator().manual_seed(settings.seed))
    size = settings.model_size

    say(f"building {settings.describe()} ...")
    unmasked = build_untrained_ctc_model(size)
    masked = rebuild_with_state(size, unmasked.state_dict())
    masks = prune_masks(unmasked, settings.sparsity)
    metadata = {"method": "global-l1", "sparsity": settings.sparsity}
    fix_masks_as_mask_path_does(masked, masks, metadata)
    dense = rebuild_with_state(size, unmasked.state_dict())
    fix_masks_as_mask_path_does(dense, masks, metadata, storage="dense")
    language_masks = dict(zip(LANGUAGES, (masks, random_masks({n: m.shape for n, m in masks.items()},
                                                              settings.sparsity, seed=settings.seed))))
    one_language, switching = (rebuild_with_state(size, unmasked.state_dict()) for _ in range(2))
    for model in (one_language, switching):
        apply_language_masks(model, language_masks, prefix=W2V_PREFIX)
        select_language(model, LANGUAGES[0])
    trained = {"no mask": unmasked, "fixed mask": masked, "dense mask": dense, "one language": one_language,
               "switching languages": switching}
    result["prunable_weights"] = sum(mask.numel() for mask in masks.values())
    result["parameters"] = sum(p.numel() for p in unmasked.parameters())
    result["sparsity"] = _sparsity(masks)
    result["optimized_values"] = {name: sum(p.numel() for p in model.parameters() if p.requires_grad)
                                  for name, model in trained.items()}
    _require(pruned_nonzero(masked, masks) == 0, "pruned weights are nonzero right after applying the mask")

    say(f"training steps: {settings.train_warmup} warm-up + {settings.train_steps} timed per model, interleaved ...")
    optimizers = {name: make_optimizer(model, settings.lr) for name, model in trained.items()}
    losses: Dict[str, List[float]] = {name: [] for name in trained}
    for model in trained.values():
        model.train()
    next_language = itertools.cycle(LANGUAGES[1:] + LANGUAGES[:1])
    steps = {name: (lambda name=name, model=model: losses[name].append(train_step(model, optimizers[name], batch)))
             for name, model in _phase_models(trained, "train").items()}
    steps["switching languages"] = lambda: (select_language(switching, next(next_language)),
                                            losses["switching languages"].append(
                                                train_step(switching, optimizers["switching languages"], batch)))
    seconds = interleaved(steps, settings.train_steps, settings.train_warmup)
    _compare_phase(result, seconds, "train")
    result["train_losses"] = losses
    if not all(math.isfinite(loss) for values in losses.values() for loss in values):
        raise RuntimeError(f"benchmark: a training loss is not finite: {losses}")
    nonzero = pruned_nonzero(masked, masks) + pruned_nonzero(dense, masks)
    _require(nonzero == 0, f"{nonzero} pruned effective weights became nonzero during masked training")
    result["pruned_nonzero_after_training"] = nonzero
    del optimizers, unmasked, dense, one_language, switching, trained

    say(f"decoding: {settings.decode_warmup} warm-up + {settings.decode_steps} timed forward passes per model, interleaved ...")
    stock = rebuild_with_state(size, bake_state_dict(masked.state_dict()), stock=True)
    baked = rebuild_with_state(size, masked.state_dict())
    bake_module(baked)
    decoded = {"stock export": stock, "baked": baked, "masked, not baked": masked}
    for model in decoded.values():
        model.eval()
    _require(not any(".parametrizations." in key for key in baked.state_dict()), "bake_module left a parametrization")
    _require(baked.state_dict().keys() == stock.state_dict().keys(), "baked and stock models differ in their keys")
    outputs = {name: decode_forward(model, batch) for name, model in decoded.items()}
    _require(torch.equal(outputs["baked"], outputs["stock export"]), "baked and stock decoding outputs differ")
    # Not bit for bit: ATen's matmul folds the (non-contiguous) attention input differently when the
    # weight does not require grad, as a weight computed under no_grad does; so only float rounding.
    difference = (outputs["masked, not baked"] - outputs["stock export"]).abs().max()
    result["masked_max_abs_difference"] = float(difference)
    seconds = interleaved({name: (lambda model=model: decode_forward(model, batch))
                           for name, model in _phase_models(decoded, "decode").items()},
                          settings.decode_steps, settings.decode_warmup)
    _compare_phase(result, seconds, "decode")
    return result


def format_step_report(result: Mapping[str, object]) -> str:
    """The benchmark as a plain-text table (reference, ours, ratio and target), one row per comparison."""
    rows = [("", "reference", "reference (s)", "ours (s)", "ratio [per-round range] (target)")]
    for comparison in COMPARISONS:
        row = result[comparison.key]
        rows.append((comparison.label, comparison.reference, f"{row['reference_median_s']:.3f}",
                     f"{row['measured_median_s']:.3f}", ratio_cell(row, comparison.target)))
    settings = result["settings"]
    lines = [f"{result['date']}  {result['machine']}",
             f"{result['shape']}; {result['parameters']:,} parameters, {result['prunable_weights']:,} prunable, "
             f"global L1 sparsity {result['sparsity']:.4f}",
             f"medians of {settings['train_steps']} training steps and {settings['decode_steps']} forward passes "
             f"per model, interleaved, after {settings['train_warmup']} / {settings['decode_warmup']} warm-up"]
    lines += text_table(rows)
    optimized = result["optimized_values"]
    lines.append(f"values the optimizer updates (Adam keeps 2 more per value): {optimized['no mask']:,} without "
                 f"masks, {optimized['fixed mask']:,} with a fixed mask (only kept weights are stored), "
                 f"{optimized['dense mask']:,} with a dense one")
    lines.append(f"pruned effective weights after masked training (fixed and dense): "
                 f"{result['pruned_nonzero_after_training']} nonzero; "
                 f"baked and stock outputs identical (the run fails otherwise); "
                 f"masked vs stock outputs: max |difference| {result['masked_max_abs_difference']:.2g}")
    return "\n".join(lines)
