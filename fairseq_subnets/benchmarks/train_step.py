"""Speed of masked training and of decoding a baked model, against the same model without masks.

Everything runs in one process on one batch of random audio, with the real plugin model
(`subnets_wav2vec_ctc`, built from a wav2vec2 config instead of a pretrained checkpoint):

* training step (forward, CTC loss, backward, a step of fairseq's Adam): reference = the model
  without masks; measured = the same weights with a fixed global-L1 mask on every prunable encoder
  matrix, fixed by the fixed_masks technique's `apply_mask_file` exactly as `+model.mask_path` does (so the
  optimizer holds only the kept weights). After the masked steps every pruned effective weight
  must still be exactly zero. The same mask with dense storage (`+model.mask_storage=dense`: full
  weights, a mask that may change in place) is timed against the same reference.
* language switching: two models with per-language masks on every prunable matrix (the global-L1
  mask and a random mask of the same sparsity, one per "language"); reference = one that trains one
  language throughout, measured = one whose active language changes at every step, as monolingual
  batches of a multilingual run do.
* pathways (ASR Pathways): the language-switching model whose optimizer step leaves the weights
  outside the active language's mask bit-identical (`core.holding.unchanged_through`, as the
  task's optimizer step does); reference = the model without masks, the dense multilingual step.
* group lasso: the model without masks plus the group-lasso term over the 8x1 blocks of every
  prunable matrix (`+model.group_lasso_strength`, the plugin's term); reference = the same model
  without it.
* a pruning event: one event of the IMP schedule (20% of every matrix's 8x1 blocks by L2 norm,
  `prune_within` on the effective weights, masks set in place); reference = the training step of the
  model without masks.
* learned masks (S3-Router): measured = the same weights with learned masks on the FFN (`fc1`,
  `fc2` of every layer; ORI scores, sparsity 0.1, per-matrix top-k) added and frozen exactly as
  `+model.score_sparsity` does (the learned_masks technique's `add_to_model`, `prepare_training`),
  so the optimizer holds only the scores and the CTC head; reference = the model without masks trained fully, the stock
  weight fine-tuning that learned masks replace, so the ratio is what a user pays for training a
  mask instead of the weights. The same model whose masks binarise by a full sort of every score
  tensor at every forward pass, as S3-Router's published code does, is timed against the same
  reference and against ours: that pair differs in nothing but the binarisation, so it says what
  the exact chunked threshold search of `prune_smallest` saves. Before training, both binarisations
  must give the same mask on the initial scores, up to which of several scores tied at the
  threshold each keeps (ours: the later ones; the unstable sort: any).
* decoding (eval, no_grad forward): reference = the stock fairseq `Wav2VecCtc` holding the baked
  state dict of the masked model (what a checkpoint written by `fairseq-subnets export` holds);
  measured = a copy of the masked model baked by `bake_module`. Their outputs must be identical.
  The masked model before baking is timed as well, for information.
* decoding with a learned mask: measured = the trained learned-mask model in eval mode, which
  binarises its scores and masks its weights once, then reuses the masked weights (the weight
  stack's eval-mode cache); reference = the stock `Wav2VecCtc` holding its
  baked state dict, what `fairseq-subnets export` makes of it, so the ratio is what decoding from
  the training checkpoint costs against decoding from the export. The export's wav2vec2 model is
  frozen as the learned-mask model's is: otherwise its weights require grad, and ATen's matmul
  then folds non-contiguous inputs differently (the rounding difference of the masked model
  above), so only with the same flags can their outputs be, and must be, identical. The
  difference from the export as loaded, every weight requiring grad, is reported.

Each row of the report is a `Comparison` in `COMPARISONS`: a measured model against a named
reference model of the same phase. The models of one phase run in turn and are compared by their
median seconds per repetition (see `timing`). A new row is a model added to its phase in `_run`
and a `Comparison` naming it.
"""
import datetime
import itertools
import math
import types
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from fairseq.optim.adam import Adam as FairseqAdamImpl

from ..core.holding import unchanged_through
from ..core.parametrize import bake_module, bake_state_dict
from ..core.pruning import global_l1_masks, prune_within, random_masks
from ..core.stats import union
from ..core.targets import select_weights
from ..core.transforms import DenseMask, add_transform, module_of, regularisation_terms, select_language, stack_of
from ..plugin.components.models import SubnetsWav2VecCtc
from ..techniques.extension import W2V_PREFIX, technique_of
from ..techniques.iterative_pruning import IterativePruning
from ..techniques.learned_masks import LEARNED_MASK_NAME, LearnedMasks
from ..techniques.learned_masks.layer import ScoreMask, score_masks
from ..techniques.pathways.layer import apply_language_masks
from ..techniques.pathways.updates import outside_active_language_masks
from .timing import compare, interleaved, machine_description, ratio_cell, text_table
from .untrained import (CtcModelSize, build_untrained_ctc_model, ctc_model_config, fix_masks_as_mask_path_does,
                        rebuild_with_state)

SAMPLE_RATE = 16000
TRAIN_TARGET = 1.10
"""Most a masked training step (fixed or dense mask) may cost, relative to the same model without masks."""
SWITCH_TARGET = 1.02
"""Most a training step may cost when the active language mask changes at every step, relative to
one language throughout."""
PATHWAY_TARGET = 1.20
"""Most a pathway step (language masks switched every step, outside-mask weights held) may cost,
relative to a dense step of the same model."""
GROUP_LASSO_TARGET = 1.10
"""Most a training step with the group-lasso term may cost, relative to one without it."""
PRUNING_EVENT_TARGET = 2.00
"""Most one pruning event may cost, in training steps of the model without masks."""
PRUNING_EVENT = {"method": "block-l2", "sparsity": 0.2, "block": (8, 1)}
GROUP_LASSO_STRENGTH = 1e-4
LEARNED_TRAIN_TARGET = 1.25
"""Most a training step with learned masks (frozen weights, trained scores) may cost, relative to
fine-tuning every weight of the same model without masks."""
LEARNED_DECODE_TARGET = 1.02
"""Most decoding with a learned mask (binarised once, then reused) may cost, relative to the stock
model holding the baked export."""
LANGUAGES = ("first", "second")
LEARNED_MASKS = {"score_sparsity": 0.1, "score_init": "ori", "score_targets": "ffn", "score_scope": "matrix"}
"""The model config keys of the learned-mask rows: S3-Router's fine-tuning setting (the FFN of every
layer, ORI scores, 10% of each matrix removed, top-k per matrix)."""


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
    Comparison("train_pathways", "training step, pathways (language masks, outside held)", "train", "no mask",
               "pathways", f"<= {PATHWAY_TARGET:.2f}"),
    Comparison("train_group_lasso", "training step, group lasso on every matrix", "train", "no mask",
               "group lasso", f"<= {GROUP_LASSO_TARGET:.2f}"),
    Comparison("pruning_event", "a pruning event (20% of the 8x1 blocks)", "train", "no mask", "pruning event",
               f"<= {PRUNING_EVENT_TARGET:.2f}"),
    Comparison("train_learned", "training step, learned mask (FFN, sparsity 0.1)", "train", "no mask",
               "learned mask", f"<= {LEARNED_TRAIN_TARGET:.2f}"),
    Comparison("train_full_sort", "training step, learned mask binarised by full sort", "train", "no mask",
               "learned mask, full sort", "information"),
    Comparison("train_learned_vs_full_sort", "training step, learned mask against full-sort binarisation", "train",
               "learned mask, full sort", "learned mask", "< 1.00"),
    Comparison("decode", "decoding, baked", "decode", "stock export", "baked", "1.00 within noise"),
    Comparison("decode_masked", "decoding, masked (not baked)", "decode", "stock export", "masked, not baked",
               "information"),
    Comparison("decode_learned", "decoding, learned mask (cached)", "decode", "stock learned export",
               "learned mask", f"<= {LEARNED_DECODE_TARGET:.2f}"),
)


# ------------------------------------------------------------------------------------------ models


def prune_masks(model, sparsity: float):
    """The global-L1 mask set of every prunable encoder matrix, as `fairseq-subnets prune` finds it."""
    return global_l1_masks(select_weights(model.state_dict()), sparsity)


class FullSortScoreMask(ScoreMask):
    """A score mask that binarises as S3-Router's published code does, for the benchmark alone:
    every training forward pass fully sorts the scores and drops the `n_pruned` lowest. The mask
    stays a bool tensor, as ours is, so that a model holding these differs from one holding ours
    in the binarisation alone."""

    def kept(self) -> torch.Tensor:
        return full_sort_kept(self.scores, self._pruned)


def full_sort_kept(scores: torch.Tensor, n_pruned: int) -> torch.Tensor:
    """Sorts all scores, then marks the `n_pruned` positions sorted first as pruned and every other
    one as kept. The sort is not stable, so among equal scores it keeps whichever it placed last."""
    flat = scores.detach().reshape(-1)
    order = flat.sort().indices
    kept = torch.empty(flat.shape, dtype=torch.bool, device=flat.device)
    kept[order[:n_pruned]] = False
    kept[order[n_pruned:]] = True
    return kept.view(scores.shape)


def learned_mask_config(size: CtcModelSize):
    """The model config of `size` with the learned-mask keys of LEARNED_MASKS set."""
    cfg = ctc_model_config(size)
    for key, value in LEARNED_MASKS.items():
        cfg[key] = value
    return cfg


def learned_mask_model(size: CtcModelSize, state: Mapping[str, torch.Tensor], full_sort_of=None):
    """A model holding `state`, with learned masks added and the model frozen around them as
    `build_model` does for LEARNED_MASKS (only the scores and the CTC head train). With
    `full_sort_of` (a learned-mask model), the masks are `FullSortScoreMask`s starting from that
    model's scores instead of freshly initialised ones."""
    model = rebuild_with_state(size, state)
    cfg = learned_mask_config(size)
    learned_masks = LearnedMasks(cfg)
    model.techniques = [learned_masks]
    if full_sort_of is None:
        learned_masks.add_to_model(model, cfg)
    else:
        for name, mask in score_masks(full_sort_of, W2V_PREFIX).items():
            add_transform(module_of(model, name, W2V_PREFIX), LEARNED_MASK_NAME,
                          FullSortScoreMask(mask.scores, mask.sparsity, mask.scope))
    learned_masks.prepare_training(model, cfg)
    return model


def group_lasso_model(size: CtcModelSize, state: Mapping[str, torch.Tensor]):
    """A model holding `state` with the group-lasso term of `+model.group_lasso_strength` on every
    prunable matrix (its block norms taken from `state`)."""
    cfg = ctc_model_config(size)
    cfg.group_lasso_strength = GROUP_LASSO_STRENGTH
    model = SubnetsWav2VecCtc.build_model(cfg, types.SimpleNamespace(target_dictionary=range(size.vocab)))
    missing, unexpected = torch.nn.Module.load_state_dict(model, state, strict=False)
    _require(not unexpected and all(key.startswith("iterative_pruning.") for key in missing),
             f"the group-lasso model differs from the plain one in {missing + unexpected}")
    technique_of(model, IterativePruning).refresh_mean_block_norms(model)
    return model


def pruning_event(masks: Mapping[str, DenseMask], modules: Mapping[str, torch.nn.Module]) -> None:
    """One event of the IMP schedule on dense masks (as `run_pruning_schedule` prunes), from the
    same starting masks every time, so each repetition does the same work."""
    with torch.no_grad():
        weights = {name: module.weight.detach() for name, module in modules.items()}
        new = prune_within(weights, {name: torch.ones_like(mask.mask) for name, mask in masks.items()},
                           PRUNING_EVENT["method"], PRUNING_EVENT["sparsity"], block=PRUNING_EVENT["block"])
    for name, mask in masks.items():
        mask.set_mask(new[name])


def check_binarisations_agree(ours: Mapping[str, ScoreMask], full_sort: Mapping[str, ScoreMask]) -> int:
    """Checks that two sets of score masks holding the same scores keep the same weights: the same
    mask, or masks keeping as many weights and differing only among scores of one value (a tie at
    the threshold, which the unstable full sort breaks its own way). Returns how many matrices
    had such a tie."""
    _require(ours.keys() == full_sort.keys(), "the full-sort model masks other weights")
    ties = 0
    for name, mask in ours.items():
        _require(torch.equal(mask.scores, full_sort[name].scores), f"{name}: the full-sort model starts from other scores")
        kept, kept_by_full_sort = mask.kept(), full_sort[name].kept()
        differing = mask.scores.detach()[kept != kept_by_full_sort]
        _require(int(kept.sum()) == int(kept_by_full_sort.sum()) and differing.unique().numel() <= 1,
                 f"{name}: full-sort and threshold-search binarisations keep different scores")
        ties += differing.numel() > 0
    return ties


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
    weight decay, here 0), with the betas and eps of the wav2vec2 fine-tuning configs, over the
    parameters that require gradients, as fairseq's trainer gives it (frozen weights get no state)."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return FairseqAdamImpl(trainable, lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)


def train_step(model, optimizer: torch.optim.Optimizer, batch: Batch, regularised: bool = False,
               pathway: bool = False) -> float:
    """One fine-tuning update: forward, CTC loss (plus the model's regularisation terms if
    `regularised`), backward, Adam step (holding the weights outside the active language's masks
    if `pathway`)."""
    optimizer.zero_grad(set_to_none=True)
    loss = _ctc_loss(model, batch)
    if regularised:
        loss = loss + sum(regularisation_terms(model).values())
    loss.backward()
    with unchanged_through(outside_active_language_masks(model) if pathway else []):
        optimizer.step()
    return float(loss.detach())


def decode_forward(model, audio: torch.Tensor) -> torch.Tensor:
    """The encoder output (T x B x V logits) of an eval-mode model on a batch of unpadded audio
    (B x samples), without autograd."""
    with torch.no_grad():
        return model(source=audio, padding_mask=None)["encoder_out"]


# --------------------------------------------------------------------------------------- benchmark


def run_step_benchmark(settings: StepBenchSettings = StepBenchSettings(),
                       say: Callable[[str], None] = print) -> Dict[str, object]:
    """Runs every comparison of COMPARISONS and returns every measurement; raises AssertionError
    if a pruned weight becomes nonzero or baked and stock outputs differ."""
    return run_seeded(settings, say, _run)


def run_seeded(settings: StepBenchSettings, say, body) -> Dict[str, object]:
    """`body(settings, say, result, batch)` with torch at the settings' thread count and seed
    (both restored after), `result` holding the date, machine, settings and shape, and `batch` the
    benchmark's batch; returns `result`."""
    settings.check()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                      "machine": machine_description(f"{settings.threads} torch thread(s)"),
                      "settings": asdict(settings), "shape": settings.describe()}
            body(settings, say, result, make_batch(settings, torch.Generator().manual_seed(settings.seed)))
            return result
    finally:
        torch.set_num_threads(previous_threads)


def _run(settings: StepBenchSettings, say, result: Dict[str, object], batch: Batch) -> None:
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
    one_language, switching, pathways = (rebuild_with_state(size, unmasked.state_dict()) for _ in range(3))
    for model in (one_language, switching, pathways):
        apply_language_masks(model, language_masks, prefix=W2V_PREFIX)
        select_language(model, LANGUAGES[0])
    lasso = group_lasso_model(size, unmasked.state_dict())
    result["group_lasso_initial_term"] = float(regularisation_terms(lasso)["group_lasso"].detach())
    pruned_in_events = rebuild_with_state(size, unmasked.state_dict())
    fix_masks_as_mask_path_does(pruned_in_events, {name: torch.ones_like(mask) for name, mask in masks.items()},
                                {"method": "none", "sparsity": 0.0}, storage="dense")
    prunable = {name: module_of(pruned_in_events, name, W2V_PREFIX) for name in masks}
    dense_masks = {name: stack_of(module).get(DenseMask.kind, "default") for name, module in prunable.items()}
    learned = learned_mask_model(size, unmasked.state_dict())
    full_sort = learned_mask_model(size, unmasked.state_dict(), full_sort_of=learned)
    result["full_sort_threshold_ties"] = check_binarisations_agree(score_masks(learned, W2V_PREFIX),
                                                                   score_masks(full_sort, W2V_PREFIX))
    trained = {"no mask": unmasked, "fixed mask": masked, "dense mask": dense, "one language": one_language,
               "switching languages": switching, "pathways": pathways, "group lasso": lasso,
               "learned mask": learned, "learned mask, full sort": full_sort}
    result["prunable_weights"] = sum(mask.numel() for mask in masks.values())
    kept_by_any = union(*language_masks.values())
    result["pathway_weights_outside_every_mask"] = sum(int((~kept).sum()) for kept in kept_by_any.values())
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
    timed = _phase_models({**trained, "pruning event": None}, "train")
    steps = {name: (lambda name=name, model=model: losses[name].append(train_step(model, optimizers[name], batch)))
             for name, model in trained.items() if name in timed}
    steps["switching languages"] = lambda: (select_language(switching, next(next_language)),
                                            losses["switching languages"].append(
                                                train_step(switching, optimizers["switching languages"], batch)))
    next_pathway = itertools.cycle(LANGUAGES[1:] + LANGUAGES[:1])
    steps["pathways"] = lambda: (select_language(pathways, next(next_pathway)),
                                 losses["pathways"].append(train_step(pathways, optimizers["pathways"], batch,
                                                                      pathway=True)))
    steps["group lasso"] = lambda: losses["group lasso"].append(train_step(lasso, optimizers["group lasso"], batch,
                                                                           regularised=True))
    steps["pruning event"] = lambda: pruning_event(dense_masks, prunable)
    steps = {name: steps[name] for name in timed}
    held_before = {name: module_of(pathways, name, W2V_PREFIX).parametrizations.weight.original.detach().clone()
                   for name in masks}
    seconds = interleaved(steps, settings.train_steps, settings.train_warmup)
    moved = sum(int((module_of(pathways, name, W2V_PREFIX).parametrizations.weight.original.detach()
                     != held_before[name])[~kept_by_any[name]].sum()) for name in masks)
    _require(moved == 0, f"{moved} weights outside every language's mask moved during pathway training")
    _compare_phase(result, seconds, "train")
    result["train_losses"] = losses
    if not all(math.isfinite(loss) for values in losses.values() for loss in values):
        raise RuntimeError(f"benchmark: a training loss is not finite: {losses}")
    nonzero = pruned_nonzero(masked, masks) + pruned_nonzero(dense, masks)
    _require(nonzero == 0, f"{nonzero} pruned effective weights became nonzero during masked training")
    result["pruned_nonzero_after_training"] = nonzero
    del optimizers, unmasked, dense, one_language, switching, pathways, lasso, pruned_in_events, full_sort, trained

    say(f"decoding: {settings.decode_warmup} warm-up + {settings.decode_steps} timed forward passes per model, interleaved ...")
    stock = rebuild_with_state(size, bake_state_dict(masked.state_dict()), stock=True)
    baked = rebuild_with_state(size, masked.state_dict())
    bake_module(baked)
    stock_learned = rebuild_with_state(size, bake_state_dict(learned.state_dict()), stock=True)
    decoded = {"stock export": stock, "baked": baked, "masked, not baked": masked,
               "stock learned export": stock_learned, "learned mask": learned}
    for model in decoded.values():
        model.eval()
    _require(not any(".parametrizations." in key for key in baked.state_dict()), "bake_module left a parametrization")
    _require(baked.state_dict().keys() == stock.state_dict().keys(), "baked and stock models differ in their keys")
    as_exported = decode_forward(stock_learned, batch.audio)
    stock_learned.get_submodule(W2V_PREFIX[:-1]).requires_grad_(False)  # as the learned-mask model's (docstring)
    outputs = {name: decode_forward(model, batch.audio) for name, model in decoded.items()}
    _require(torch.equal(outputs["baked"], outputs["stock export"]), "baked and stock decoding outputs differ")
    _require(torch.equal(outputs["learned mask"], outputs["stock learned export"]),
             "learned-mask and stock (baked) decoding outputs differ")
    # Not bit for bit: ATen's matmul folds the (non-contiguous) attention input differently when the
    # weight does not require grad, as a weight computed under no_grad does; so only float rounding.
    difference = (outputs["masked, not baked"] - outputs["stock export"]).abs().max()
    result["masked_max_abs_difference"] = float(difference)
    difference = (outputs["learned mask"] - as_exported).abs().max()
    result["learned_unfrozen_export_max_abs_difference"] = float(difference)
    seconds = interleaved({name: (lambda model=model: decode_forward(model, batch.audio))
                           for name, model in _phase_models(decoded, "decode").items()},
                          settings.decode_steps, settings.decode_warmup)
    _compare_phase(result, seconds, "decode")


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
                 f"{optimized['dense mask']:,} with a dense one, {optimized['learned mask']:,} with learned masks "
                 f"(scores and CTC head)")
    lines.append(f"pruned effective weights after masked training (fixed and dense): "
                 f"{result['pruned_nonzero_after_training']} nonzero; "
                 f"baked and stock outputs identical, learned-mask and stock (baked) outputs identical "
                 f"(the run fails otherwise); "
                 f"masked vs stock outputs: max |difference| {result['masked_max_abs_difference']:.2g}; "
                 f"learned-mask vs stock outputs with every weight requiring grad, as loaded: max |difference| "
                 f"{result['learned_unfrozen_export_max_abs_difference']:.2g}")
    lines.append(f"pathway training: {result['pathway_weights_outside_every_mask']:,} weights outside both languages' "
                 "masks, none of them changed (the run fails otherwise)")
    lines.append(f"initial learned masks: full sort and threshold search agree (the run fails otherwise), "
                 f"differing only among scores tied at the threshold in {result['full_sort_threshold_ties']} "
                 f"matrices")
    return "\n".join(lines)
