"""Speed of fixed-mask training and of decoding a baked model, against the same model without masks.

Everything runs in one process on one batch of random audio, with the real plugin model
(`subnets_wav2vec_ctc`, built from a wav2vec2 config instead of a pretrained checkpoint):

* training step (forward, CTC loss, backward, a step of fairseq's Adam): reference = the model
  without masks; measured = the same weights with a fixed global-L1 mask on every prunable encoder
  matrix, fixed by `SubnetsWav2VecCtc.apply_mask_file` exactly as `+model.mask_path` does (so the
  optimizer holds only the kept weights). After the masked steps every pruned effective weight
  must still be exactly zero.
* decoding (eval, no_grad forward): reference = the stock fairseq `Wav2VecCtc` holding the baked
  state dict of the masked model (what a checkpoint written by `fairseq-subnets export` holds);
  measured = a copy of the masked model baked by `bake_module`. Their outputs must be identical.
  The masked model before baking is timed as well, for information.

The models being compared run in turn (A, B, A, B, ...) so that drift of the machine (another
job starting, clock changes) hits both alike; the first repetitions are warm-up and discarded.
Each row reports the median seconds per repetition and ratio = median(measured) / median(reference),
plus the range of the per-repetition ratios (measured_i / reference_i) as a noise estimate.
"""
import datetime
import math
import os
import platform
import statistics
import tempfile
import time
import types
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
from fairseq.optim.adam import Adam as FairseqAdamImpl
from omegaconf import OmegaConf

from ..core.maskfile import save_mask_file
from ..core.parametrize import bake_module, bake_state_dict
from ..core.pruning import global_l1_masks
from ..core.targets import select_weights
from .models import W2V_PREFIX, SubnetsWav2Vec2CtcConfig, SubnetsWav2VecCtc

SAMPLE_RATE = 16000
TRAIN_TARGET = 1.10
"""Most a fixed-mask training step may cost, relative to the same model without masks."""


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
    def attention_heads(self) -> int:
        return self.heads or max(1, self.width // 64)

    def describe(self) -> str:
        return (f"{self.layers} layers, width {self.width}, FFN {self.ffn}, {self.attention_heads} heads; "
                f"batch {self.batch} x {self.seconds:g} s of {SAMPLE_RATE // 1000} kHz audio")

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


# ------------------------------------------------------------------------------------------ models


def _model_config(settings: StepBenchSettings, config_class):
    """A CTC config whose wav2vec2 model is built from `w2v_args` instead of a checkpoint."""
    model = OmegaConf.structured(Wav2Vec2Config(
        encoder_layers=settings.layers, encoder_embed_dim=settings.width,
        encoder_ffn_embed_dim=settings.ffn, encoder_attention_heads=settings.attention_heads,
    ))
    model._name = "wav2vec2"
    # The task is only instantiated (no data is read), so its data directory need not exist.
    w2v_args = OmegaConf.create({"task": {"_name": "audio_pretraining", "data": "unused", "normalize": False},
                                 "model": model})
    return config_class(w2v_path=None, w2v_args=w2v_args, data="unused", normalize=False)


def _build(settings: StepBenchSettings, stock: bool = False):
    """A freshly initialised `subnets_wav2vec_ctc` model (stock fairseq `Wav2VecCtc` with `stock`)."""
    task = types.SimpleNamespace(target_dictionary=range(settings.vocab))
    if stock:
        return Wav2VecCtc.build_model(_model_config(settings, Wav2Vec2CtcConfig), task)
    return SubnetsWav2VecCtc.build_model(_model_config(settings, SubnetsWav2Vec2CtcConfig), task)


def _copy(settings: StepBenchSettings, model, stock: bool = False, state=None):
    """A model with `model`'s state (or `state`). Built and loaded rather than deep-copied: the
    positional convolution's weight_norm makes wav2vec2 models refuse deepcopy."""
    twin = _build(settings, stock)
    twin.load_state_dict(model.state_dict() if state is None else state, strict=True)
    return twin


def _prune_masks(model, sparsity: float):
    """The global-L1 mask set of every prunable encoder matrix, as `fairseq-subnets prune` finds it."""
    return global_l1_masks(select_weights(model.state_dict()), sparsity)


def _apply_as_plugin(model, masks, sparsity: float) -> None:
    """Fixes `masks` the way `+model.mask_path` does: through a mask file and apply_mask_file."""
    with tempfile.TemporaryDirectory(prefix="fairseq-subnets-step-bench-") as directory:
        path = os.path.join(directory, "mask.safetensors")
        save_mask_file(path, masks, {"method": "global-l1", "sparsity": sparsity})
        model.apply_mask_file(path)


def _sparsity(masks) -> float:
    kept = sum(int(torch.count_nonzero(mask)) for mask in masks.values())
    return 1.0 - kept / sum(mask.numel() for mask in masks.values())


def _require(condition: bool, message: str) -> None:
    """An assertion that `python -O` does not remove."""
    if not condition:
        raise AssertionError(f"benchmark: {message}")


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


def interleaved(runs: Mapping[str, Callable[[], object]], steps: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per call of each function, calling them in turn (A, B, A, B, ...) warmup + steps
    times; the warm-up rounds are not kept."""
    seconds: Dict[str, List[float]] = {name: [] for name in runs}
    for round_index in range(warmup + steps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def compare(seconds: Mapping[str, List[float]], reference: str, measured: str) -> Dict[str, object]:
    """Medians, their ratio (measured / reference) and the range of the per-round ratios."""
    pairs = [b / a for a, b in zip(seconds[reference], seconds[measured])]
    ref_median, ours_median = statistics.median(seconds[reference]), statistics.median(seconds[measured])
    return {"reference": reference, "measured": measured, "reference_median_s": ref_median,
            "measured_median_s": ours_median, "ratio": ours_median / ref_median,
            "pair_ratio_min": min(pairs), "pair_ratio_max": max(pairs),
            "reference_s": list(seconds[reference]), "measured_s": list(seconds[measured])}


# --------------------------------------------------------------------------------------- benchmark


def _machine(threads: int) -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} torch thread(s), "
            f"load average {os.getloadavg()[0]:.2f}")


def run_step_benchmark(settings: StepBenchSettings = StepBenchSettings(),
                       say: Callable[[str], None] = print) -> Dict[str, object]:
    """Runs both comparisons (see the module docstring) and returns every measurement; raises
    AssertionError if a pruned weight becomes nonzero or baked and stock outputs differ."""
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
              "machine": _machine(settings.threads), "settings": asdict(settings),
              "shape": settings.describe()}
    batch = make_batch(settings, torch.Generator().manual_seed(settings.seed))

    say(f"building {settings.describe()} ...")
    unmasked = _build(settings)
    masked = _copy(settings, unmasked)
    masks = _prune_masks(unmasked, settings.sparsity)
    _apply_as_plugin(masked, masks, settings.sparsity)
    result["prunable_weights"] = sum(mask.numel() for mask in masks.values())
    result["parameters"] = sum(p.numel() for p in unmasked.parameters())
    result["sparsity"] = _sparsity(masks)
    result["optimized_values"] = {name: sum(p.numel() for p in model.parameters() if p.requires_grad)
                                  for name, model in (("unmasked", unmasked), ("masked", masked))}
    _require(pruned_nonzero(masked, masks) == 0, "pruned weights are nonzero right after applying the mask")

    say(f"training steps: {settings.train_warmup} warm-up + {settings.train_steps} timed per model, interleaved ...")
    optimizers = {name: make_optimizer(model, settings.lr) for name, model in (("unmasked", unmasked), ("masked", masked))}
    unmasked.train()
    masked.train()
    losses: Dict[str, List[float]] = {"unmasked": [], "masked": []}
    seconds = interleaved({
        "unmasked": lambda: losses["unmasked"].append(train_step(unmasked, optimizers["unmasked"], batch)),
        "masked": lambda: losses["masked"].append(train_step(masked, optimizers["masked"], batch)),
    }, settings.train_steps, settings.train_warmup)
    result["train"] = compare(seconds, "unmasked", "masked")
    result["train"]["losses"] = losses
    if not all(math.isfinite(loss) for values in losses.values() for loss in values):
        raise RuntimeError(f"benchmark: a training loss is not finite: {losses}")
    nonzero = pruned_nonzero(masked, masks)
    _require(nonzero == 0, f"{nonzero} pruned effective weights became nonzero during masked training")
    result["pruned_nonzero_after_training"] = nonzero
    del optimizers, unmasked

    say(f"decoding: {settings.decode_warmup} warm-up + {settings.decode_steps} timed forward passes per model, interleaved ...")
    stock = _copy(settings, masked, stock=True, state=bake_state_dict(masked.state_dict()))
    baked = _copy(settings, masked)
    bake_module(baked)
    models = {"stock (exported)": stock, "baked": baked, "masked, not baked": masked}
    for model in models.values():
        model.eval()
    _require(not any(".parametrizations." in key for key in baked.state_dict()), "bake_module left a parametrization")
    _require(baked.state_dict().keys() == stock.state_dict().keys(), "baked and stock models differ in their keys")
    outputs = {name: decode_forward(model, batch) for name, model in models.items()}
    _require(torch.equal(outputs["baked"], outputs["stock (exported)"]), "baked and stock decoding outputs differ")
    result["decode_outputs_equal"] = True
    # Not bit for bit: ATen's matmul folds the (non-contiguous) attention input differently when the
    # weight does not require grad, as a weight computed under no_grad does; so only float rounding.
    difference = (outputs["masked, not baked"] - outputs["stock (exported)"]).abs().max()
    result["masked_max_abs_difference"] = float(difference)
    seconds = interleaved({name: (lambda model=model: decode_forward(model, batch)) for name, model in models.items()},
                          settings.decode_steps, settings.decode_warmup)
    result["decode"] = compare(seconds, "stock (exported)", "baked")
    result["decode_masked"] = compare(seconds, "stock (exported)", "masked, not baked")
    return result


def format_step_report(result: Mapping[str, object]) -> str:
    """The benchmark as a plain-text table (reference, ours, ratio and target)."""
    train, decode, masked = result["train"], result["decode"], result["decode_masked"]

    def ratio(row, target):
        return f"{row['ratio']:.3f}x [{row['pair_ratio_min']:.3f}-{row['pair_ratio_max']:.3f}] ({target})"

    rows = [
        ("", "reference", "reference (s)", "ours (s)", "ratio [per-round range] (target)"),
        ("training step, fixed mask", "no mask", f"{train['reference_median_s']:.3f}",
         f"{train['measured_median_s']:.3f}", ratio(train, f"<= {TRAIN_TARGET:.2f}")),
        ("decoding, baked", "stock export", f"{decode['reference_median_s']:.3f}",
         f"{decode['measured_median_s']:.3f}", ratio(decode, "1.00 within noise")),
        ("decoding, masked (not baked)", "stock export", f"{masked['reference_median_s']:.3f}",
         f"{masked['measured_median_s']:.3f}", ratio(masked, "information")),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    settings = result["settings"]
    lines = [f"{result['date']}  {result['machine']}",
             f"{result['shape']}; {result['parameters']:,} parameters, {result['prunable_weights']:,} prunable, "
             f"global L1 sparsity {result['sparsity']:.4f}",
             f"medians of {settings['train_steps']} training steps and {settings['decode_steps']} forward passes "
             f"per model, interleaved, after {settings['train_warmup']} / {settings['decode_warmup']} warm-up"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    optimized = result["optimized_values"]
    lines.append(f"values the optimizer updates (Adam keeps 2 more per value): {optimized['unmasked']:,} without "
                 f"masks, {optimized['masked']:,} with them (only kept weights are stored)")
    lines.append(f"pruned effective weights after masked training: {result['pruned_nonzero_after_training']} nonzero; "
                 f"baked == stock outputs: {'yes' if result['decode_outputs_equal'] else 'NO'}; "
                 f"masked vs stock outputs: max |difference| {result['masked_max_abs_difference']:.2g}")
    return "\n".join(lines)
