"""What a subnetwork costs where it is deployed: whole-model decoding with sparse kernels against
the dense export, the resident memory of the weights, and HF export and import time.

One process, random models built from a config (`untrained`; nothing is downloaded) at the shape
asked for (XLS-R 300M by default: 24 layers, width 1024, FFN 4096, XLS-R's feature extractor), one
utterance of random audio per length:

* decoding (eval, no_grad, the CTC model's forward pass, feature extractor included), for each
  mask set (global L1 at each sparsity, 8x1 blocks by L2 norm per matrix, as `fairseq-subnets
  prune` finds them): reference = the stock fairseq `Wav2VecCtc` holding the masked model's baked
  state dict (what `fairseq-subnets export` writes: the dense export, zeros and all); measured =
  the plugin model with the same masks fixed as `+model.mask_path` fixes them, with
  `model.sparse_decoding=on` and, separately, `auto`. The three take turns (`timing.interleaved`)
  at each thread count and length; each first decodes once untimed (that pass makes the CSR form
  and, under `auto`, times every matrix at the thread count being measured, so the `auto` model is
  built anew for each thread count), and its logits are compared with the reference's. Ratios are
  dense / sparse: above 1 the sparse model is faster.
* break-even: per thread count and length, the lowest measured global-L1 sparsity from which
  `on` beats dense (`break_even_sparsity`).
* resident weight memory: the bytes of every distinct tensor storage reachable from the model
  after decoding (`resident_weight_bytes`: parameters, buffers, the masks' caches, the effective
  weights the weight stacks keep in eval mode, and the CSR forms sparse decoding holds), sparse
  against dense.
* compact checkpoint, for each mask set: the bytes of `export --compact`'s model state
  (`write_compact_model_state`) against `torch.save` of the dense export's, and the seconds to read
  each back (weights-only), the compact one also verified and decoded into every CSR form, which is
  what a compact checkpoint's load does instead of filling dense weights.
* HF export and import: `export --format hf --mask` and `import --format hf` (interop.hf, the
  functions the commands run) of a checkpoint of the model with the 90% global-L1 mask file (or
  the first mask set's), timed once each (transformers already imported), in a temporary folder.

Targets (`target_rows`): at least 1.5x at global L1 90% on 1 thread (aim 2x), `auto` never below
0.98x, and weight memory at 90% at most 0.35x of dense. Missing them does not fail the run; they
are printed with PASS or FAIL.
"""
import contextlib
import datetime
import importlib.util
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from fairseq.data import Dictionary
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import OmegaConf
from torch import nn

from ..component_names import PLUGIN_CTC_MODEL, PLUGIN_FINETUNING_TASK
from ..core.maskfile import load_mask_file, save_mask_file
from ..core.parametrize import bake_state_dict
from ..core.pruning import compute_masks
from ..core.targets import select_weights
from ..interop.hf import INSTALL_HINT, WEIGHTS_FILE, export_hf_folder, import_hf_folder, transformers_module
from ..plugin.formats.checkpoints import load_fairseq_checkpoint, trainer_checkpoint
from ..plugin.formats.compact import read_compact_checkpoint, write_compact_model_state
from ..techniques import sparse_decoding
from ..techniques.fixed_masks import apply_mask_file
from .timing import compare, interleaved, machine_description, text_table
from .train_step import SAMPLE_RATE, decode_forward
from .untrained import XLSR_ARCHITECTURE, CtcModelSize, build_untrained_ctc_model, ctc_model_config, rebuild_with_state

LETTERS = ("|", *(chr(code) for code in range(ord("A"), ord("Z") + 1)), "'")
"""The output symbols of the exported model (after fairseq's 4 special ones): a letter vocabulary."""
SHAPES: Dict[str, Tuple[CtcModelSize, Mapping[str, object]]] = {
    "tiny": (CtcModelSize(2, 64, 128), {}),
    "base": (CtcModelSize(12, 768, 3072), {}),
    "xlsr_300m": (CtcModelSize(24, 1024, 4096, 16), XLSR_ARCHITECTURE),
}
"""name -> (encoder size, architecture beyond fairseq's wav2vec2 defaults). tiny keeps the full
convolutional feature extractor, so it times a real model's front end behind a 2-layer encoder."""
GLOBAL_L1, BLOCKS = "global-l1", "block-l2"
BLOCK = (8, 1)
MODES = ("on", "auto")
DENSE = "dense"
SPEEDUP_TARGET, SPEEDUP_AIM, TARGET_SPARSITY = 1.5, 2.0, 0.9
AUTO_FLOOR = 0.98
MEMORY_TARGET = 0.35
MIN_SAMPLES = 800
"""The feature extractor's receptive field at 16 kHz (about 50 ms): shorter audio gives no frame."""


@dataclass(frozen=True)
class MaskSpec:
    """One mask set: a pruning method of `core.pruning` at a sparsity."""

    method: str
    sparsity: float

    @property
    def label(self) -> str:
        kind = "global L1" if self.method == GLOBAL_L1 else f"{BLOCK[0]}x{BLOCK[1]} blocks"
        return f"{kind} {self.sparsity:.0%}"


@dataclass(frozen=True)
class DeployBenchSettings:
    """The defaults are issue 23's table: XLS-R 300M shape, global L1 at 50 to 95% and 8x1 blocks
    at 90%, 1 and 2 threads, 4 s and 15 s utterances."""

    shape: str = "xlsr_300m"
    sparsities: Tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
    block_sparsities: Tuple[float, ...] = (0.9,)
    threads: Tuple[int, ...] = (1, 2)
    seconds: Tuple[float, ...] = (4.0, 15.0)
    repeats: int = 5
    seed: int = 0

    def mask_specs(self) -> List[MaskSpec]:
        return ([MaskSpec(GLOBAL_L1, s) for s in sorted(self.sparsities)]
                + [MaskSpec(BLOCKS, s) for s in sorted(self.block_sparsities)])

    def check(self) -> None:
        """ValueError naming the option of the first bad value; nothing is built before."""
        if self.shape not in SHAPES:
            raise ValueError(f"--shape {self.shape}: choose one of {', '.join(SHAPES)}")
        lists = {"--sparsities": self.sparsities, "--block-sparsities": self.block_sparsities,
                 "--threads": self.threads, "--seconds": self.seconds}
        for option, values in lists.items():
            twice = sorted({value for value in values if values.count(value) > 1})
            if twice:
                raise ValueError(f"{option}: {twice[0]:g} is listed twice")
        for option in ("--sparsities", "--block-sparsities"):
            outside = [value for value in lists[option] if not 0.0 < value < 1.0]
            if outside:
                raise ValueError(f"{option}: {outside[0]:g} is not a sparsity in (0, 1)")
        if not self.mask_specs():
            raise ValueError("--sparsities and --block-sparsities are both empty: nothing to measure")
        if not self.threads or not self.seconds:
            raise ValueError(f"{'--threads' if not self.threads else '--seconds'}: give at least one value")
        cpus = os.cpu_count() or 1
        for threads in self.threads:
            if not 1 <= threads <= cpus:
                raise ValueError(f"--threads: {threads} is not between 1 and this machine's {cpus} CPUs")
        short = [seconds for seconds in self.seconds if seconds * SAMPLE_RATE < MIN_SAMPLES]
        if short:
            raise ValueError(f"--seconds: {short[0]:g} s of audio is shorter than the feature extractor's receptive "
                             f"field ({MIN_SAMPLES / SAMPLE_RATE:g} s)")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {self.repeats}")
        if importlib.util.find_spec("transformers") is None:
            raise ValueError(f"the HF export and import rows need transformers, which is not installed: {INSTALL_HINT}")


# ---------------------------------------------------------------------------------------- memory


def _storages_of(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The strided tensors holding a tensor's data: itself, or a sparse tensor's components."""
    if tensor.layout == torch.strided:
        yield tensor
    elif tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        yield from (tensor.crow_indices(), tensor.col_indices(), tensor.values())
    elif tensor.layout in (torch.sparse_csc, torch.sparse_bsc):
        yield from (tensor.ccol_indices(), tensor.row_indices(), tensor.values())
    else:  # COO
        yield from (tensor._indices(), tensor._values())


def _followed(value) -> bool:
    """Objects the memory walk looks into: modules, containers, and this package's own objects
    (sparse decoding's projections and hooks, techniques, transforms), not foreign ones such as
    configs or tasks, which hold no weights."""
    return (isinstance(value, (nn.Module, dict, list, tuple, set))
            or type(value).__module__.startswith(__package__.partition(".")[0] + "."))


def reachable_tensors(root) -> Iterator[torch.Tensor]:
    """Every tensor reachable from `root` through modules (parameters, buffers, submodules, hooks
    and plain attributes such as caches), containers and this package's objects, each once."""
    seen = set()
    pending = [root]
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, (list, tuple, set)):
            pending.extend(value)
        elif _followed(value):
            attributes = getattr(value, "__dict__", {}).values()
            pending.extend(v for v in attributes if isinstance(v, torch.Tensor) or _followed(v))


def resident_weight_bytes(model: nn.Module) -> int:
    """Bytes of the distinct storages of every tensor reachable from `model`: a storage that
    several tensors view (tied weights, a cache returning its source) counts once, whole."""
    storages = {}
    for tensor in reachable_tensors(model):
        for part in _storages_of(tensor):
            storage = part.untyped_storage()
            if storage.nbytes():
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


# ------------------------------------------------------------------------------------------ rules


def speedup(seconds: Mapping[str, List[float]], measured: str) -> Dict[str, object]:
    """`measured` against DENSE as dense / measured medians, with the range of the per-round
    ratios; the medians and every time are kept."""
    row = compare(seconds, DENSE, measured)
    return {"dense_median_s": row["reference_median_s"], "median_s": row["measured_median_s"],
            "speedup": 1.0 / row["ratio"], "speedup_min": 1.0 / row["pair_ratio_max"],
            "speedup_max": 1.0 / row["pair_ratio_min"], "seconds": row["measured_s"]}


def break_even_sparsity(speedups: Mapping[float, float]) -> Optional[float]:
    """The lowest measured sparsity from which sparse beats dense (speed-up above 1) at it and at
    every higher measured sparsity; None if it does not at the highest. A win below a loss (noise)
    is not a break-even: the claim is that pruning further keeps paying."""
    found = None
    for sparsity in sorted(speedups, reverse=True):
        if speedups[sparsity] <= 1.0:
            break
        found = sparsity
    return found


# ----------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class MaskedModels:
    """Builds models of one shape holding `state` with the masks of one mask file fixed on them, as
    `+model.mask_path` fixes them (`apply_mask_file`: the file format's checks run too). The file
    is written once per mask set and read by every model built from it."""

    size: CtcModelSize
    architecture: Mapping[str, object]
    state: Mapping[str, torch.Tensor]
    mask_path: str

    def masked(self) -> nn.Module:
        model = rebuild_with_state(self.size, self.state, architecture=self.architecture)
        apply_mask_file(model, self.mask_path)
        return model.eval()

    def sparse(self, mode: str):
        """(a masked model with `model.sparse_decoding=mode`, what sparse decoding installed)."""
        model = self.masked()
        return model, sparse_decoding.enable_sparse_decoding(model, mode)


def write_mask_file(folder: str, spec: MaskSpec, weights: Mapping[str, torch.Tensor]) -> str:
    """Prunes `weights` as `spec` says and writes the masks as a mask file in `folder`; its path."""
    path = os.path.join(folder, f"{spec.method}-{spec.sparsity:g}.mask")
    metadata = {"method": spec.method, "sparsity": spec.sparsity,
                "block": f"{BLOCK[0]}x{BLOCK[1]}" if spec.method == BLOCKS else ""}
    save_mask_file(path, compute_masks(weights, spec.method, spec.sparsity, block=BLOCK), metadata)
    return path


def _audio(seconds: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(1, int(round(seconds * SAMPLE_RATE)), generator=generator)


# -------------------------------------------------------------------------------------- benchmark


def run_deploy_benchmark(settings: DeployBenchSettings = DeployBenchSettings(),
                         say: Callable[[str], None] = print) -> Dict[str, object]:
    """Every measurement of the module docstring; torch's thread count and random state are
    restored after."""
    settings.check()
    previous_threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]), decisions_not_logged():
            torch.manual_seed(settings.seed)
            return _run(settings, say)
    finally:
        torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def decisions_not_logged():
    """Sparse decoding logs one line per matrix per `auto` model (hundreds here); the report counts
    the matrices `auto` ran sparse instead."""
    logger = sparse_decoding.logger
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run(settings: DeployBenchSettings, say) -> Dict[str, object]:
    size, architecture = SHAPES[settings.shape]
    result: Dict[str, object] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(f"load at start {os.getloadavg()[0]:.2f}"),
        "settings": asdict(settings), "shape": f"{settings.shape}: {size.describe()}",
        "decoding": [], "memory": [], "compact": [],
    }
    say(f"building a random {settings.shape} model ({size.describe()}) ...")
    base = build_untrained_ctc_model(size, architecture=architecture)
    state = base.state_dict()
    del base
    weights = select_weights(state)
    result["prunable_weights"] = sum(weight.numel() for weight in weights.values())
    specs = settings.mask_specs()
    export_spec = next((spec for spec in specs if spec == MaskSpec(GLOBAL_L1, TARGET_SPARSITY)), specs[0])
    with tempfile.TemporaryDirectory(prefix="fairseq-subnets-deploy-") as folder:
        mask_paths = {}
        for spec in specs:
            say(f"{spec.label}: masks, the dense export and the sparse models ...")
            mask_paths[spec] = write_mask_file(folder, spec, weights)
            _measure_mask_set(settings, MaskedModels(size, architecture, state, mask_paths[spec]), spec, result, say)
        result["break_even"] = break_even_rows(result["decoding"])
        say(f"HF export and import of the {export_spec.label} model ...")
        result["hf"] = time_hf_round_trip(folder, size, architecture, state, mask_paths[export_spec], export_spec)
    result["targets"] = target_rows(result)
    return result


def _measure_mask_set(settings: DeployBenchSettings, models: MaskedModels, spec: MaskSpec, result, say) -> None:
    """The decoding rows, the memory row and the compact-checkpoint row of one mask set (module
    docstring)."""
    on = models.masked()
    # exported before sparse decoding is installed: under `on` it may drop the dense weights
    exported = bake_state_dict(on.state_dict())
    dense = rebuild_with_state(models.size, exported, stock=True, architecture=models.architecture).eval()
    compact = measure_compact_checkpoint(os.path.dirname(models.mask_path), spec, exported, models.mask_path)
    result["compact"].append(compact)
    say(f"  compact checkpoint: {compact['compact_bytes'] / compact['dense_bytes']:.3f}x of the dense export's bytes")
    del exported
    on_state = sparse_decoding.enable_sparse_decoding(on, "on")
    memory = {"masks": spec.label, "method": spec.method, "sparsity": spec.sparsity,
              "dense_bytes": resident_weight_bytes(dense), "auto_bytes": {}}
    for threads in settings.threads:
        torch.set_num_threads(threads)
        auto, auto_state = models.sparse("auto")
        timed = {DENSE: dense, "on": on, "auto": auto}
        for length in settings.seconds:
            say(f"  {threads} thread(s), {length:g} s: 1 untimed + {settings.repeats} timed passes each, interleaved ...")
            audio = _audio(length, settings.seed)
            outputs = {name: decode_forward(model, audio) for name, model in timed.items()}
            seconds = interleaved({name: (lambda model=model: decode_forward(model, audio))
                                   for name, model in timed.items()}, settings.repeats, 0)
            row = {"masks": spec.label, "method": spec.method, "sparsity": spec.sparsity, "threads": threads,
                   "seconds": length, "frames": int(outputs[DENSE].shape[0]), "dense_s": list(seconds[DENSE]),
                   "on_sparse_matrices": len(on_state.sparse_names()),
                   "auto_sparse_matrices": len(auto_state.sparse_names()), "masked_matrices": len(auto_state.projections)}
            for mode in MODES:
                row[mode] = speedup(seconds, mode)
                row[mode]["max_abs_difference"] = float((outputs[mode] - outputs[DENSE]).abs().max())
            result["decoding"].append(row)
            say(f"    dense {row['on']['dense_median_s']:.3f} s; on {_cell(row['on'])}; auto {_cell(row['auto'])}, "
                f"{row['auto_sparse_matrices']}/{row['masked_matrices']} matrices sparse")
        memory["auto_bytes"][str(threads)] = resident_weight_bytes(auto)
        del auto, auto_state, timed
    memory["on_bytes"] = resident_weight_bytes(on)
    result["memory"].append(memory)
    say(f"  weight memory: on {memory['on_bytes'] / memory['dense_bytes']:.3f}x of dense "
        f"({memory['on_bytes'] / 1e6:.1f} MB against {memory['dense_bytes'] / 1e6:.1f} MB)")


def measure_compact_checkpoint(folder: str, spec: MaskSpec, baked: Mapping[str, torch.Tensor],
                               mask_path: str) -> Dict[str, object]:
    """Bytes and read-back seconds of the compact checkpoint of a model state whose masks (those of
    `mask_path`) are baked in, against the dense export of the same state (module docstring)."""
    mask_names = list(load_mask_file(mask_path).masks)
    dense_path, compact_path = os.path.join(folder, "dense.pt"), os.path.join(folder, "compact.pt")
    torch.save({"model": baked}, dense_path)
    compact_bytes = write_compact_model_state(compact_path, baked, mask_names)
    start = time.perf_counter()
    load_fairseq_checkpoint(dense_path)
    dense_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, _, matrices = read_compact_checkpoint(compact_path)
    for matrix in matrices.values():
        matrix.csr()
    compact_seconds = time.perf_counter() - start
    row = {"masks": spec.label, "method": spec.method, "sparsity": spec.sparsity,
           "dense_bytes": os.path.getsize(dense_path), "compact_bytes": compact_bytes,
           "dense_load_s": dense_seconds, "compact_load_s": compact_seconds}
    os.remove(dense_path)
    os.remove(compact_path)
    return row


def break_even_rows(decoding: Sequence[Mapping[str, object]]) -> List[Dict[str, object]]:
    """`break_even_sparsity` of `on` over the global-L1 rows, per thread count and length."""
    cases = sorted({(row["threads"], row["seconds"]) for row in decoding if row["method"] == GLOBAL_L1})
    return [{"threads": threads, "seconds": length, "sparsity": break_even_sparsity(
                {row["sparsity"]: row["on"]["speedup"] for row in decoding
                 if row["method"] == GLOBAL_L1 and (row["threads"], row["seconds"]) == (threads, length)})}
            for threads, length in cases]


def time_hf_round_trip(folder: str, size, architecture, state, mask_path: str, spec: MaskSpec) -> Dict[str, object]:
    """Seconds of `export_hf_folder` on a checkpoint of the unmasked model (a fine-tuning checkpoint
    as fairseq's trainer writes it, with its dictionary) with the mask file `mask_path` baked in,
    as `export --format hf --mask` runs it, and of `import_hf_folder` on the folder it wrote, and
    the bytes of each result; all in `folder`."""
    transformers_module()  # imported before the clock starts: a deployment imports it once
    dictionary = Dictionary()
    for symbol in LETTERS[:size.vocab - len(dictionary)]:
        dictionary.add_symbol(symbol)
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.model = ctc_model_config(size, architecture=architecture)
    cfg.model._name = PLUGIN_CTC_MODEL
    cfg.task = {"_name": PLUGIN_FINETUNING_TASK, "data": folder, "labels": "ltr", "normalize": False}
    checkpoint = os.path.join(folder, "checkpoint.pt")
    torch.save(trainer_checkpoint(cfg, dict(state), "SubnetsCtcCriterion", task_state={"target_dictionary": dictionary}),
               checkpoint)
    hf_folder, imported = os.path.join(folder, "hf"), os.path.join(folder, "imported", "checkpoint.pt")
    os.mkdir(os.path.dirname(imported))
    start = time.perf_counter()
    export_hf_folder(checkpoint, hf_folder, mask_path=mask_path)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    import_hf_folder(hf_folder, imported)
    import_s = time.perf_counter() - start
    return {"masks": spec.label, "export_s": export_s, "import_s": import_s, "checkpoint_bytes": os.path.getsize(checkpoint),
            "hf_weights_bytes": os.path.getsize(os.path.join(hf_folder, WEIGHTS_FILE)),
            "imported_bytes": os.path.getsize(imported)}


def target_rows(result: Mapping[str, object]) -> List[Dict[str, object]]:
    """Each target with its measured value and PASS / FAIL, or None where it was not measured."""
    at_target = [row for row in result["decoding"]
                 if (row["method"], row["sparsity"], row["threads"]) == (GLOBAL_L1, TARGET_SPARSITY, 1)]
    rows = []
    for row in at_target or [None]:
        value = row["on"]["speedup"] if row else None
        rows.append({"target": f"sparse (on) at global L1 {TARGET_SPARSITY:.0%}, 1 thread"
                     + (f", {row['seconds']:g} s" if row else "") + f": >= {SPEEDUP_TARGET}x (aim {SPEEDUP_AIM}x)",
                     "value": value, "unit": "x", "pass": None if row is None else value >= SPEEDUP_TARGET})
    auto = [row["auto"]["speedup"] for row in result["decoding"]]
    rows.append({"target": f"auto, every row: >= {AUTO_FLOOR}x", "value": min(auto), "unit": "x",
                 "pass": min(auto) >= AUTO_FLOOR})
    memory = next((row for row in result["memory"] if (row["method"], row["sparsity"]) == (GLOBAL_L1, TARGET_SPARSITY)),
                  None)
    value = memory["on_bytes"] / memory["dense_bytes"] if memory else None
    rows.append({"target": f"weight memory, on at global L1 {TARGET_SPARSITY:.0%}: <= {MEMORY_TARGET}x of dense",
                 "value": value, "unit": "x", "pass": None if memory is None else value <= MEMORY_TARGET})
    return rows


# ------------------------------------------------------------------------------------------ report


def _cell(mode_row: Mapping[str, object]) -> str:
    return f"{mode_row['speedup']:.2f}x [{mode_row['speedup_min']:.2f}-{mode_row['speedup_max']:.2f}]"


def _verdict(passed: Optional[bool]) -> str:
    return "not measured" if passed is None else "PASS" if passed else "FAIL"


DECODING_COLUMNS = ("masks", "threads", "seconds", "dense_s", "on_s", "on_speedup", "auto_s", "auto_speedup",
                    "auto_sparse_matrices", "masked_matrices", "on_max_abs_difference", "auto_max_abs_difference")


def decoding_records(result: Mapping[str, object]) -> Iterable[Tuple]:
    """One tuple of DECODING_COLUMNS per decoding row (medians in seconds, speed-ups dense / sparse)."""
    for row in result["decoding"]:
        yield (row["masks"], row["threads"], row["seconds"], row["on"]["dense_median_s"], row["on"]["median_s"],
               row["on"]["speedup"], row["auto"]["median_s"], row["auto"]["speedup"], row["auto_sparse_matrices"],
               row["masked_matrices"], row["on"]["max_abs_difference"], row["auto"]["max_abs_difference"])


def format_deploy_csv(result: Mapping[str, object]) -> str:
    """The decoding table as CSV, one row per mask set, thread count and length."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(DECODING_COLUMNS)
    writer.writerows(decoding_records(result))
    return text.getvalue()


def format_deploy_report(result: Mapping[str, object]) -> str:
    settings = result["settings"]
    lines = [f"{result['date']}  {result['machine']}",
             f"{result['shape']}; {result['prunable_weights']:,} prunable encoder weights; one utterance per length; "
             f"medians of {settings['repeats']} passes per model after 1 untimed, interleaved; speed-up = dense / "
             "sparse [per-round range]",
             "", "decoding (whole model, eval, no grad):"]
    rows = [("masks", "threads", "audio", "dense (s)", "on (s)", "on speed-up", "auto (s)", "auto speed-up",
             "auto sparse", "max |diff| on / auto")]
    for row in result["decoding"]:
        rows.append((row["masks"], str(row["threads"]), f"{row['seconds']:g} s", f"{row['on']['dense_median_s']:.3f}",
                     f"{row['on']['median_s']:.3f}", _cell(row["on"]), f"{row['auto']['median_s']:.3f}",
                     _cell(row["auto"]), f"{row['auto_sparse_matrices']}/{row['masked_matrices']}",
                     f"{row['on']['max_abs_difference']:.1e} / {row['auto']['max_abs_difference']:.1e}"))
    lines += text_table(rows)
    lines += ["", "break-even (lowest global-L1 sparsity from which on beats dense at every higher one):"]
    lines += text_table([("threads", "audio", "break-even")] + [
        (str(row["threads"]), f"{row['seconds']:g} s", "none measured" if row["sparsity"] is None
         else f"{row['sparsity']:.0%}") for row in result["break_even"]])
    lines += ["", "resident weight memory (distinct storages reachable from the model, after decoding):"]
    rows = [("masks", "dense (MB)", "on (MB)", "on / dense", "auto (MB) by threads", "auto / dense")]
    for row in result["memory"]:
        auto = row["auto_bytes"]
        rows.append((row["masks"], f"{row['dense_bytes'] / 1e6:.1f}", f"{row['on_bytes'] / 1e6:.1f}",
                     f"{row['on_bytes'] / row['dense_bytes']:.3f}x",
                     ", ".join(f"{bytes_ / 1e6:.1f} ({threads})" for threads, bytes_ in auto.items()),
                     ", ".join(f"{bytes_ / row['dense_bytes']:.3f}x" for bytes_ in auto.values())))
    lines += text_table(rows)
    lines += ["", "compact checkpoint (export --compact's model state against the dense export's):"]
    lines += text_table([("masks", "dense (MB)", "compact (MB)", "compact / dense", "read dense (s)",
                          "read, verify and decode compact (s)")] + [
        (row["masks"], f"{row['dense_bytes'] / 1e6:.1f}", f"{row['compact_bytes'] / 1e6:.1f}",
         f"{row['compact_bytes'] / row['dense_bytes']:.3f}x", f"{row['dense_load_s']:.2f}", f"{row['compact_load_s']:.2f}")
        for row in result["compact"]])
    hf = result["hf"]
    lines += ["", f"HF export and import ({hf['masks']} model, once each): export {hf['export_s']:.2f} s "
              f"({hf['checkpoint_bytes'] / 1e6:.1f} MB checkpoint -> {hf['hf_weights_bytes'] / 1e6:.1f} MB "
              f"model.safetensors), import {hf['import_s']:.2f} s ({hf['imported_bytes'] / 1e6:.1f} MB checkpoint)",
              "", "targets:"]
    lines += text_table([("target", "measured", "verdict")] + [
        (row["target"], "-" if row["value"] is None else f"{row['value']:.3f}{row['unit']}", _verdict(row["pass"]))
        for row in result["targets"]])
    return "\n".join(lines)
