"""Speed and memory of global L1 pruning on an XLS-R-300M-shaped encoder: ours against
torch.nn.utils.prune.global_unstructured(L1Unstructured), plus mask file and statistics costs.
Pure torch: it never imports fairseq.

Each pruning method runs in its own Python process, so that its peak resident memory can be read
from getrusage (ru_maxrss) without the other method's allocations; "extra peak" is that peak minus
the peak reached after building the random weights. Both processes build identical weights from
one seed; the reference writes its mask to a mask file, and the run fails unless our mask equals
it except for which of several weights with exactly the threshold magnitude are kept: at 300M
float32 weights a few such ties are normal, and torch's topk orders them arbitrarily.

The IOU of two masks is timed against a named reference measured in the same process, in turn
(see `timing`): the plain torch expression `(a & b).sum() / (a | b).sum()` over every matrix, which
allocates two temporaries per matrix where `stats.iou` reuses one scratch buffer. Its ratio, not a
wall-clock limit, is the claim that our statistics are fast enough for encoder-sized masks.

Mask files are timed the same way, in this process: writing and reading random masks of the
encoder's shapes at sparsity 0.1, 0.5 and 0.9 in format version 3 (what `save_mask_file` writes)
against the named reference `write_version_2_file` (raw bits, as fairseq-subnets wrote before
version 3), with both files' bits per weight next to the entropy H(s), the least any lossless
file of such masks can take on average. Each weight is pruned independently with probability s,
so that H(s) is exactly the entropy per weight. `--only-mask-files` runs these rows alone, without
the pruning processes and their memory.
"""
import argparse
import datetime
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from safetensors.numpy import save as safetensors_bytes

from ..atomic import write_atomically
from ..core.maskfile import FORMAT, file_checksum, load_mask_file, save_mask_file
from ..core.pruning import global_l1_masks
from ..core.stats import iou, union_ratio
from ..core.targets import encoder_weight_shapes
from .timing import compare, interleaved, machine_description, ratio_cell, text_table

UNION_MASKS = 5
IOU_ROUNDS = 3
PLAIN_IOU, OUR_IOU = "plain torch IOU", "stats.iou"
MASK_FILE_SPARSITIES = (0.1, 0.5, 0.9)
MASK_FILE_ROUNDS = 3
VERSION_2_FILE, VERSION_3_FILE = "version 2 (raw bits)", "version 3"
ENTROPY_FACTOR_TARGET = 1.15


@dataclass(frozen=True)
class PruneBenchSettings:
    """The encoder to prune and whose mask files are timed (XLS-R 300M by default), the sparsity, torch
    threads per process, and whether to time the mask files alone."""

    layers: int = 24
    width: int = 1024
    ffn: int = 4096
    sparsity: float = 0.9
    threads: int = 1
    only_mask_files: bool = False

    def shapes(self) -> Dict[str, tuple]:
        return encoder_weight_shapes(self.layers, self.width, self.ffn)

    def describe(self) -> str:
        return f"{self.layers} layers, width {self.width}, FFN {self.ffn}"

    def check(self) -> None:
        bad = [name for name in ("layers", "width", "ffn", "threads") if getattr(self, name) < 1]
        if bad:
            raise ValueError(f"{bad[0]} must be positive, got {getattr(self, bad[0])}")
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must lie in (0, 1), got {self.sparsity}")


def build_weights(settings: PruneBenchSettings, seed: int) -> Dict[str, torch.Tensor]:
    """Gaussian weights, identical in every process for one seed, built without temporaries."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.empty(size).normal_(0.0, 0.02, generator=generator) for name, size in settings.shapes().items()}


def refill_weights(weights: Dict[str, torch.Tensor], seed: int) -> None:
    """Overwrites the weights in place with another seed's values (no extra memory)."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in weights.values():
        tensor.normal_(0.0, 0.02, generator=generator)


def differing_ties(weights, ours, reference) -> int:
    """How many weights two L1 masks of the same weights disagree on; fails unless they keep the
    same number of weights and disagree only on weights of one magnitude (a tie at the threshold)."""
    kept = [sum(int(torch.count_nonzero(m)) for m in masks.values()) for masks in (ours, reference)]
    if kept[0] != kept[1]:
        raise RuntimeError(f"benchmark: ours keeps {kept[0]} weights, torch.nn.utils.prune {kept[1]}")
    magnitudes = torch.cat([weights[name][ours[name] != reference[name]].abs() for name in weights])
    if magnitudes.numel() and not bool((magnitudes == magnitudes[0]).all()):
        raise RuntimeError("benchmark: our global L1 mask differs from torch.nn.utils.prune's beyond threshold ties")
    return magnitudes.numel()


def plain_torch_iou(a, b) -> float:
    """The reference IOU: the obvious torch expression, two temporaries per matrix."""
    both = sum(int((a[name] & b[name]).sum()) for name in a)
    either = sum(int((a[name] | b[name]).sum()) for name in a)
    return both / either if either else 0.0


def binary_entropy(sparsity: float) -> float:
    """H(s) in bits: what a weight pruned with probability s carries, the least a lossless mask file
    can spend per weight on average."""
    return -sum(p * math.log2(p) for p in (sparsity, 1.0 - sparsity) if p > 0)


def random_iid_masks(shapes: Dict[str, tuple], sparsity: float, seed: int) -> Dict[str, torch.Tensor]:
    """Masks pruning each weight independently with probability `sparsity`."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(size, generator=generator) >= sparsity for name, size in shapes.items()}


def write_version_2_file(path: str, masks: Dict[str, torch.Tensor]) -> None:
    """The reference writer: a format version 2 file, as fairseq-subnets wrote every mask file before
    version 3 (one packbits tensor per mask, named like the mask), which load_mask_file still reads."""
    packed = {name: np.packbits(mask.numpy().reshape(-1), bitorder="little") for name, mask in masks.items()}
    metadata = {"format": FORMAT, "format_version": "2",
                "shapes": json.dumps([[name, list(mask.shape)] for name, mask in masks.items()])}
    metadata["sha256"] = file_checksum("2", metadata, list(packed.values()))
    write_atomically(path, safetensors_bytes(packed, metadata=metadata))


def mask_file_costs(settings: PruneBenchSettings, directory: str) -> Dict[str, Dict[str, object]]:
    """Per sparsity of MASK_FILE_SPARSITIES: H(s), both versions' bits per weight, and their write and
    read times taking turns (version 3 against version 2); fails unless both read back exactly."""
    weights = sum(math.prod(size) for size in settings.shapes().values())
    paths = {VERSION_2_FILE: os.path.join(directory, "version-2.safetensors"),
             VERSION_3_FILE: os.path.join(directory, "version-3.safetensors")}
    costs = {}
    for sparsity in MASK_FILE_SPARSITIES:
        masks = random_iid_masks(settings.shapes(), sparsity, seed=0)
        writers = {VERSION_2_FILE: lambda: write_version_2_file(paths[VERSION_2_FILE], masks),
                   VERSION_3_FILE: lambda: save_mask_file(paths[VERSION_3_FILE], masks)}
        write_seconds = interleaved(writers, MASK_FILE_ROUNDS, warmup=1)
        read_seconds = interleaved({version: lambda path=path: load_mask_file(path) for version, path in paths.items()},
                                   MASK_FILE_ROUNDS, warmup=1)
        for path in paths.values():
            loaded = load_mask_file(path).masks
            if any(not torch.equal(loaded[name], mask) for name, mask in masks.items()):
                raise RuntimeError(f"{path}: mask file round trip changed the masks")
        costs[str(sparsity)] = {
            "entropy_bits": binary_entropy(sparsity),
            "bits_per_weight": {version: 8 * os.path.getsize(path) / weights for version, path in paths.items()},
            "write": compare(write_seconds, VERSION_2_FILE, VERSION_3_FILE),
            "read": compare(read_seconds, VERSION_2_FILE, VERSION_3_FILE),
        }
    return costs


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _torch_global_l1(weights, sparsity):
    from torch.nn.utils import prune

    holders = []
    for tensor in weights.values():
        holder = torch.nn.Module()
        holder.weight = torch.nn.Parameter(tensor, requires_grad=False)
        holders.append(holder)
    prune.global_unstructured(
        [(holder, "weight") for holder in holders], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    return {name: holder.weight_mask for name, holder in zip(weights, holders)}


METHODS: Dict[str, Callable] = {"torch": _torch_global_l1, "ours": global_l1_masks}


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def worker(method: str, settings: PruneBenchSettings, mask_dir: str) -> Dict[str, object]:
    """One method in this process: time and extra peak RSS. The reference then writes its mask
    to mask_dir; ours compares with it, and measures the mask file size and save/load time, IOU of
    two masks and the union ratio of UNION_MASKS masks."""
    weights = build_weights(settings, seed=0)
    sparsity = settings.sparsity
    baseline = _peak_rss_bytes()
    masks, seconds = _timed(METHODS[method], weights, sparsity)
    report = {"method": method, "seconds": seconds, "extra_peak_bytes": _peak_rss_bytes() - baseline,
              "baseline_peak_bytes": baseline}
    masks = {name: mask.to(torch.bool) for name, mask in masks.items()}
    reference_path = os.path.join(mask_dir, "torch.safetensors")
    if method == "torch":
        save_mask_file(reference_path, masks, {"method": "torch.nn.utils.prune global L1", "sparsity": sparsity})
    else:
        report["differing_ties"] = differing_ties(weights, masks, load_mask_file(reference_path).masks)
        report.update(_file_and_statistics(weights, masks, sparsity, os.path.join(mask_dir, "ours.safetensors")))
    return report


def _file_and_statistics(weights, masks, sparsity, path):
    _, save_seconds = _timed(save_mask_file, path, masks, {"method": "global-l1", "sparsity": sparsity})
    loaded, load_seconds = _timed(load_mask_file, path)
    if any(not torch.equal(loaded.masks[name], mask) for name, mask in masks.items()):
        raise RuntimeError(f"{path}: mask file round trip changed the masks")
    others = []
    for seed in range(1, UNION_MASKS):
        refill_weights(weights, seed)
        others.append(global_l1_masks(weights, sparsity))
    iou_value, reference_iou = iou(masks, others[0]), plain_torch_iou(masks, others[0])
    if abs(reference_iou - iou_value) > 1e-9:
        raise RuntimeError(f"benchmark: stats.iou gives {iou_value}, the plain torch expression {reference_iou}")
    iou_seconds = interleaved({PLAIN_IOU: lambda: plain_torch_iou(masks, others[0]),
                               OUR_IOU: lambda: iou(masks, others[0])}, IOU_ROUNDS, warmup=1)
    ratio, ratio_seconds = _timed(union_ratio, [masks] + others)
    return {"file_bytes": os.path.getsize(path), "save_seconds": save_seconds, "load_seconds": load_seconds,
            "iou": iou_value, "iou_timing": compare(iou_seconds, PLAIN_IOU, OUR_IOU),
            "union_ratio": ratio, "union_ratio_seconds": ratio_seconds}


def _run_worker(method, settings: PruneBenchSettings, mask_dir):
    command = [sys.executable, "-m", __name__, "--method", method, "--layers", str(settings.layers),
               "--width", str(settings.width), "--ffn", str(settings.ffn), "--sparsity", str(settings.sparsity),
               "--threads", str(settings.threads), "--mask-dir", mask_dir]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker '{method}' failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_benchmark(settings: PruneBenchSettings = PruneBenchSettings(),
                  say: Callable[[str], None] = print) -> Dict[str, object]:
    """Runs the reference, then ours, each in a fresh process with `threads` torch threads, then
    the mask file rows here (only those with `only_mask_files`); returns every measurement plus the
    ratios, and fails if the two masks differ or a mask file does not read back exactly."""
    settings.check()
    total = sum(int(np.prod(size)) for size in settings.shapes().values())
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_description(f"{settings.threads} torch thread(s) per process"),
              "shape": settings.describe(), "weights": total, "sparsity": settings.sparsity}
    with tempfile.TemporaryDirectory(prefix="fairseq-subnets-bench-") as mask_dir:
        if not settings.only_mask_files:
            say(f"reference: torch.nn.utils.prune.global_unstructured on {total:,} weights ...")
            result["torch"] = _run_worker("torch", settings, mask_dir)
            say("ours: fairseq_subnets.core.pruning.global_l1_masks ...")
            result["ours"] = _run_worker("ours", settings, mask_dir)
        say(f"mask files: version 3 against version 2 at sparsity {', '.join(map(str, MASK_FILE_SPARSITIES))} ...")
        result["mask_files"] = mask_file_costs(settings, mask_dir)
    if not settings.only_mask_files:
        reference, ours = result["torch"], result["ours"]
        result["speedup"] = reference["seconds"] / ours["seconds"]
        result["memory_ratio"] = ours["extra_peak_bytes"] / max(reference["extra_peak_bytes"], 1)
        result["bits_per_weight"] = 8 * ours["file_bytes"] / total
    return result


def _entropy_cell(bits_per_weight: float, sparsity: float) -> str:
    entropy = binary_entropy(sparsity)
    return f"{bits_per_weight / entropy:.3f} x H({sparsity}) = {entropy:.4f} (<= {ENTROPY_FACTOR_TARGET} x H)"


def _pruning_rows(result: Dict[str, object]) -> List[Tuple[str, ...]]:
    reference, ours = result["torch"], result["ours"]
    gib = 2.0 ** 30
    return [
        ("", "torch.prune", "fairseq-subnets", "ratio (target)"),
        ("global L1 time (s)", f"{reference['seconds']:.2f}", f"{ours['seconds']:.2f}",
         f"{result['speedup']:.1f}x faster (>= 20x)"),
        ("extra peak RSS (GiB)", f"{reference['extra_peak_bytes'] / gib:.2f}", f"{ours['extra_peak_bytes'] / gib:.2f}",
         f"1/{1 / max(result['memory_ratio'], 1e-9):.1f} (<= 1/15)"),
        ("same mask", "", "", f"yes (up to {ours['differing_ties']} tied weights at the threshold)"),
        ("mask file (MB, bits/weight)", "", f"{ours['file_bytes'] / 1e6:.1f}",
         f"{result['bits_per_weight']:.4f}: {_entropy_cell(result['bits_per_weight'], result['sparsity'])}"),
        ("mask file save / load (s)", "", f"{ours['save_seconds']:.2f} / {ours['load_seconds']:.2f}", ""),
        ("IOU of two masks (s)", f"{ours['iou_timing']['reference_median_s']:.3f} (plain torch)",
         f"{ours['iou_timing']['measured_median_s']:.3f}", ratio_cell(ours["iou_timing"], "<= 1.00")),
        (f"union ratio of {UNION_MASKS} masks (s)", "", f"{ours['union_ratio_seconds']:.3f}", f"UR {ours['union_ratio']:.4f}"),
    ]


def _mask_file_rows(costs: Dict[str, Dict[str, object]]) -> List[Tuple[str, ...]]:
    rows = [(f"random masks, {MASK_FILE_ROUNDS} rounds", VERSION_2_FILE, VERSION_3_FILE, "ratio (target)")]
    for sparsity, cost in costs.items():
        bits = cost["bits_per_weight"]
        rows.append((f"s = {sparsity}: bits/weight", f"{bits[VERSION_2_FILE]:.4f}", f"{bits[VERSION_3_FILE]:.4f}",
                     _entropy_cell(bits[VERSION_3_FILE], float(sparsity))))
        for step, limit in (("write", 5), ("read", 2)):
            timing = cost[step]
            rows.append((f"s = {sparsity}: {step} (s)", f"{timing['reference_median_s']:.2f}",
                         f"{timing['measured_median_s']:.2f}",
                         ratio_cell(timing, f"version 3 <= {limit} s at 302M weights")))
    return rows


def format_report(result: Dict[str, object]) -> str:
    """The benchmark as plain-text tables: pruning (unless only mask files ran), then mask files."""
    lines = [f"{result['date']}  {result['machine']}",
             f"{result['shape']}: {result['weights']:,} prunable weights, sparsity {result['sparsity']}"]
    if "ours" in result:
        lines += text_table(_pruning_rows(result)) + [""]
    return "\n".join(lines + text_table(_mask_file_rows(result["mask_files"])))


def _worker_main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="One benchmark worker (run by run_benchmark).")
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--ffn", type=int, required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--mask-dir", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = PruneBenchSettings(args.layers, args.width, args.ffn, args.sparsity, args.threads)
    print(json.dumps(worker(args.method, settings, args.mask_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
