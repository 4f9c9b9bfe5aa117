"""A rehearsal of the whole workflow on an XLS-R-300M-shaped model: does every stage run on this
machine, and how long and how much memory does each take?

Nothing is downloaded: the pretrained model has random weights and the speech is synthesized, so
the rehearsal says nothing about accuracy, only whether the commands a user runs at this size
work together. Each step is one child process running what a user would run:

  1. synthesize speech          `fairseq-subnets data synth` (espeak-ng; 4 train, 2 valid, 2 test)
  2. build pretrained model     a wav2vec2 pretraining checkpoint (XLS-R's architecture, random weights)
  3. prune                      `fairseq-subnets prune --method global-l1` on it
  4. bad mask_path refused      the training command of step 5 with the mask cut in half: how soon
                                stock `fairseq-hydra-train` stops with our one line (the mask is
                                checked before model.w2v_path is loaded)
  5. fixed-mask training        stock `fairseq-hydra-train` with the shipped `xlsr_300m` config
  6. decode                     stock `fairseq-generate` on the test utterances
  7. export                     `fairseq-subnets export`
  8. load export, stock fairseq a Python process that never imports fairseq_subnets and has no
                                user dir loads the export and runs it on one test utterance
  9. learned-mask training      stock `fairseq-hydra-train` with the shipped `learned_masks_xlsr_300m`
                                config (S3-Router: frozen weights, FFN scores)
 10. tuner training (S2-LoRA)   stock `fairseq-hydra-train` with the shipped `s2lora_xlsr_300m` config

Training rehearses the shipped config, so it overrides only what it must (`training_overrides`):
the required paths, the update count and the mask; what a CPU needs (no fp16, one process instead
of the config's 4 GPUs); and two settings that would otherwise make a run of a few updates skip
what a real run does for most of its updates: the encoder stays frozen for the config's first
10,000 updates (so none of its weights would be trained) and validation waits as long. The
shipped `max_tokens` stays: the synthesized training set (about 10 s) is one batch.

Peak memory is the `ru_maxrss` that `os.wait4` returns for the step's process: the largest
resident set reached by that process or by any process it waited for (fairseq's own, its data
loader workers), so steps 4 and 5, which start fairseq from a small Python driver, measure
fairseq itself. It is a per-process peak; processes running at the same time are not summed. A
rehearsal is an absolute measurement of one machine, unlike the ratios of the other benchmarks.
"""
import datetime
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence

import yaml

from .. import USER_DIR
from ..component_names import STOCK_FINETUNING_TASK
from ..runner import CONFIG_DIR, fairseq_command, tail
from .timing import machine_description, text_table

SHIPPED_CONFIG = "xlsr_300m"
TRAINING_RUNS = {"train": (SHIPPED_CONFIG, "finetune"), "train-learned": ("learned_masks_xlsr_300m", "learned"),
                 "train-tuner": ("s2lora_xlsr_300m", "s2lora")}
"""Python step -> (shipped config, save folder) of each training the rehearsal runs; the first
trains under the pruned mask, the others on the unpruned pretrained model."""
LANGUAGE = "es"
CORPUS_DEFINITION = f"""\
# The rehearsal's corpus: a few short Spanish utterances, enough to train on, validate and decode.
name: rehearsal
seed: 1
split_seed: 1
speech: {{variants: [m1, f2], speed: [170, 190], pitch: [40, 60]}}
split: {{valid: 2, test: 2}}
languages:
  {LANGUAGE}: {{voices: [es], copies: 1, max_sentences: 8}}
"""
DECODED_SUBSET = "test"
REPORT_NAME = "rehearsal.json"
KIB_PER_GIB = 2 ** 20


@dataclass(frozen=True)
class RehearsalSettings:
    """Where everything goes, the encoder's size (XLS-R 300M by default: 24 layers, width 1024,
    FFN 4096, 16 heads), the sparsity, the training updates, and the memory budget the largest
    step must stay within."""

    out_dir: str
    layers: int = 24
    width: int = 1024
    ffn: int = 4096
    heads: int = 16
    sparsity: float = 0.9
    updates: int = 2
    budget_gib: float = 24.0
    seed: int = 0

    def __post_init__(self):
        """Absolute, because every step runs as a child process inside the output folder: a relative
        `out_dir` would name a folder below itself there."""
        object.__setattr__(self, "out_dir", str(Path(self.out_dir).resolve()))  # a frozen dataclass

    @property
    def model_size(self):
        from .untrained import CtcModelSize

        return CtcModelSize(self.layers, self.width, self.ffn, self.heads)

    def describe(self) -> str:
        return (f"{self.layers} layers, width {self.width}, FFN {self.ffn}, {self.heads} heads, XLS-R feature "
                f"extractor; global L1 sparsity {self.sparsity}, {self.updates} updates")

    def check(self) -> None:
        positive = {"layers": self.layers, "width": self.width, "ffn": self.ffn, "heads": self.heads,
                    "updates": self.updates, "budget_gib": self.budget_gib}
        bad = [name for name, value in positive.items() if value <= 0]
        if bad:
            raise ValueError(f"{bad[0]} must be positive, got {positive[bad[0]]}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of the {self.heads} attention heads")
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must lie in (0, 1), got {self.sparsity}")
        model = shipped_config()["model"]
        if self.width * model["mask_channel_prob"] < model["mask_channel_length"]:
            raise ValueError(
                f"width {self.width} is too narrow for the shipped config's channel masking (mask_channel_prob "
                f"{model['mask_channel_prob']}, mask_channel_length {model['mask_channel_length']}): stock fairseq's "
                f"compute_mask_indices raises when it draws no span, so the width must be at least "
                f"{math.ceil(model['mask_channel_length'] / model['mask_channel_prob'])}")
        refuse_used_output_folder(self.out_dir, "a rehearsal")


def refuse_used_output_folder(out_dir, what: str) -> None:
    """ValueError unless `out_dir` is new or an empty folder: `what` starts from nothing, and
    fairseq would resume training from a checkpoint left there."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} is not an empty folder: {what} starts from nothing (fairseq would "
                         "resume training from a checkpoint left there)")


class RehearsalFiles:
    """Every path of one rehearsal, under its output folder."""

    def __init__(self, out_dir):
        self.out = Path(out_dir).resolve()
        self.logs = self.out / "logs"
        self.corpus_definition = self.out / "corpus.yaml"
        self.corpus = self.out / "corpus"
        self.data = self.corpus / LANGUAGE
        self.pretrained = self.out / "pretrained.pt"
        self.mask = self.out / "mask.safetensors"
        self.trained = self.out / TRAINING_RUNS["train"][1] / "checkpoint_last.pt"
        self.decoding = self.out / "decode"
        self.exported = self.out / "exported.pt"
        self.report = self.out / REPORT_NAME


def shipped_config() -> Dict[str, object]:
    return yaml.safe_load((CONFIG_DIR / "finetune" / f"{SHIPPED_CONFIG}.yaml").read_text())


def training_overrides(settings: RehearsalSettings, run: str = "train") -> List[str]:
    """What the rehearsal changes in a shipped XLS-R config, and nothing else (see the module docstring)."""
    files = RehearsalFiles(settings.out_dir)
    mask = [f"+model.mask_path={files.mask}"] if run == "train" else []
    return [
        f"common.user_dir={USER_DIR}", f"task.data={files.data}", f"model.w2v_path={files.pretrained}",
        f"checkpoint.save_dir={files.out / TRAINING_RUNS[run][1]}", f"optimization.max_update={settings.updates}",
        *mask, "common.cpu=true", "common.fp16=false", "distributed_training.distributed_world_size=1",
        "model.freeze_finetune_updates=0", "dataset.validate_after_updates=0",
    ]


# ------------------------------------------------------------------- steps run in a Python child


def build_pretrained(settings: RehearsalSettings) -> Dict[str, object]:
    """Step 2: the random pretraining checkpoint, normalizing audio as the shipped config's task
    does (stock fine-tuning refuses a mismatch)."""
    import torch

    from .untrained import XLSR_ARCHITECTURE, save_untrained_pretraining_checkpoint

    torch.manual_seed(settings.seed)
    path = RehearsalFiles(settings.out_dir).pretrained
    normalize = bool(shipped_config()["task"]["normalize"])
    parameters = save_untrained_pretraining_checkpoint(path, settings.model_size, normalize, **XLSR_ARCHITECTURE)
    return {"parameters": parameters, "file_gb": round(path.stat().st_size / 1e9, 3)}


LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[fairseq_cli\.train\]", re.MULTILINE)
"""The time stamp of fairseq-hydra-train's first log line, written once its imports are done."""
UPSTREAM_LOADED = re.compile(r"^\[[^\]]*\]\[fairseq\.models\.wav2vec\.wav2vec2_asr\]", re.MULTILINE)
"""fairseq's log line of the pretraining config it has just read from model.w2v_path: a refusal
logged after it came only once the upstream model was loaded."""
REFUSED_STATUS = 2


def refuse_bad_mask(settings: RehearsalSettings) -> Dict[str, object]:
    """Step 4: the fixed-mask training command with the pruned mask file cut in half. Reports how
    long stock fairseq-hydra-train takes to stop from its first log line (after its imports), the
    refusal itself, and from its start, and the command's CPU time; fails unless it ends with our
    one line naming the key, before model.w2v_path was loaded."""
    files = RehearsalFiles(settings.out_dir)
    damaged = files.out / "damaged-mask.safetensors"
    damaged.write_bytes(files.mask.read_bytes()[:files.mask.stat().st_size // 2])
    overrides = [override for override in training_overrides(settings)
                 if not override.startswith(("+model.mask_path=", "checkpoint.save_dir="))]
    command = [fairseq_command("fairseq-hydra-train"), "--config-dir", str(CONFIG_DIR / "finetune"), "--config-name",
               SHIPPED_CONFIG, *overrides, f"+model.mask_path={damaged}", f"checkpoint.save_dir={files.out / 'refused'}"]
    cpu_before = _children_cpu_seconds()
    started = time.time()
    run = subprocess.run(command, capture_output=True, text=True)
    ended = time.time()
    command_cpu = _children_cpu_seconds() - cpu_before
    last_line = (run.stderr.strip().splitlines() or [""])[-1]
    if run.returncode != REFUSED_STATUS or "model.mask_path" not in last_line:
        raise RuntimeError(f"the damaged mask was not refused with one line (exit {run.returncode}): {last_line}")
    if UPSTREAM_LOADED.search(run.stdout + run.stderr):
        raise RuntimeError("the damaged mask was refused only after model.w2v_path was loaded")
    first_log = LOG_TIME.search(run.stdout + run.stderr)
    after_start_up = ended - datetime.datetime.strptime(first_log.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() \
        if first_log else None
    return {"refused_in_s": round(after_start_up, 2) if after_start_up is not None else None,
            "command_s": round(ended - started, 2), "command_cpu_s": round(command_cpu, 2)}


def _children_cpu_seconds() -> float:
    """User and system time of this process's finished children (on a shared machine the wall
    time also holds the waits for a core)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(settings: RehearsalSettings, run: str = "train") -> Dict[str, object]:
    """Steps 5, 9 and 10: stock fairseq-hydra-train on a shipped config; fails unless training finished."""
    from ..runner import hydra_train

    files = RehearsalFiles(settings.out_dir)
    config, folder = TRAINING_RUNS[run]
    text = hydra_train(config, training_overrides(settings, run), files.logs / f"fairseq-hydra-train-{folder}.log")
    updates = re.findall(r"num_updates[\" :=]+(\d+)", text)
    trained = re.search(r"num\. trained: ([\d,]+)", text)
    return {"updates": int(updates[-1]) if updates else None,
            "trained_values": int(trained.group(1).replace(",", "")) if trained else None}


def decode(settings: RehearsalSettings) -> Dict[str, object]:
    """Step 6: stock fairseq-generate on the trained checkpoint (random weights: the CER is noise)."""
    from ..runner import generate

    files = RehearsalFiles(settings.out_dir)
    decoded = generate(files.data, files.trained, DECODED_SUBSET, files.decoding)
    return {"utterances": decoded.hypotheses, "cer": round(decoded.cer, 1)}


PYTHON_STEPS: Dict[str, Callable[[RehearsalSettings], Dict[str, object]]] = {
    "build": build_pretrained, "refuse": refuse_bad_mask, "decode": decode,
    **{run: (lambda settings, run=run: train(settings, run)) for run in TRAINING_RUNS}}

STOCK_LOAD_SCRIPT = """\
import json, sys, torch
from fairseq import checkpoint_utils
checkpoint, data, subset = sys.argv[1:]
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": data})
plugin_modules = sorted(name for name in sys.modules if name.startswith("fairseq_subnets"))
if plugin_modules:
    sys.exit(f"loading the export imported the plugin: {plugin_modules}")
model = models[0].eval()
task.load_dataset(subset)
dataset = task.dataset(subset)
with torch.no_grad():
    logits = model.get_logits(model(**dataset.collater([dataset[0]])["net_input"]))
print(json.dumps({"model": type(model).__name__, "task": cfg.task._name, "logits": list(logits.shape),
                  "finite": bool(torch.isfinite(logits).all())}))
"""
"""Step 8, run by `python -c` outside the repository, so stock fairseq alone loads the export."""


# ----------------------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class Step:
    name: str
    command: Sequence[str]
    facts: Callable[[str], Dict[str, object]]
    """What the step's standard output (after it succeeded) says, for the report."""


def _last_json_line(stdout: str) -> Dict[str, object]:
    """The facts a Python step prints last (`_step_main`), after whatever its libraries printed."""
    return json.loads(stdout.splitlines()[-1])


def _python_step(name: str, settings: RehearsalSettings) -> List[str]:
    return [sys.executable, "-m", __name__, name, json.dumps(asdict(settings))]


def steps(settings: RehearsalSettings) -> List[Step]:
    files = RehearsalFiles(settings.out_dir)
    subnets = fairseq_command("fairseq-subnets")

    def corpus_counts(_stdout):
        splits = json.loads((files.corpus / "corpus.json").read_text(encoding="utf-8"))["splits"][LANGUAGE]
        return {split: numbers["utterances"] for split, numbers in splits.items()}

    def mask_summary(stdout):
        summary = json.loads(stdout)
        return {"weights": summary["weights"], "kept": summary["kept"], "sparsity": round(summary["sparsity"], 4)}

    def file_size(_stdout):
        return {"file_gb": round(files.exported.stat().st_size / 1e9, 3)}

    def stock_model(stdout):
        facts = json.loads(stdout)
        if (facts["model"], facts["task"], facts["finite"]) != ("Wav2VecCtc", STOCK_FINETUNING_TASK, True):
            raise RuntimeError(f"stock fairseq loaded the export as {facts}, expected a stock Wav2VecCtc of "
                               "audio_finetuning with finite outputs")
        return facts

    return [
        Step("synthesize speech", [subnets, "data", "synth", "--corpus", str(files.corpus_definition),
                                   "--out", str(files.corpus), "--quiet"], corpus_counts),
        Step("build pretrained model", _python_step("build", settings), _last_json_line),
        Step("prune (global L1)", [subnets, "prune", str(files.pretrained), "--method", "global-l1",
                                   "--sparsity", str(settings.sparsity), "--out", str(files.mask), "--json"],
             mask_summary),
        Step("bad mask_path refused", _python_step("refuse", settings), _last_json_line),
        Step("fixed-mask training", _python_step("train", settings), _last_json_line),
        Step("decode (fairseq-generate)", _python_step("decode", settings), _last_json_line),
        Step("export", [subnets, "export", str(files.trained), "--out", str(files.exported)], file_size),
        Step("load export, stock fairseq", [sys.executable, "-c", STOCK_LOAD_SCRIPT, str(files.exported),
                                            str(files.data), DECODED_SUBSET], stock_model),
        Step("learned-mask training", _python_step("train-learned", settings), _last_json_line),
        Step("tuner training (S2-LoRA)", _python_step("train-tuner", settings), _last_json_line),
    ]


# ---------------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class ChildRun:
    exit_status: int
    """the child's exit code, or minus the signal that ended it (-9: killed, e.g. out of memory)"""
    wall_seconds: float
    cpu_seconds: float
    """user and system time of the child and the processes it waited for: on a shared machine the
    wall time also holds the waits for a core, this does not"""
    peak_rss_kib: int


def run_measured(command: Sequence[str], stdout_path: Path, stderr_path: Path, cwd: Path) -> ChildRun:
    """Runs `command` to its end and returns its wall time, and the CPU time and peak resident
    memory of it and the processes it waited for, from the rusage `os.wait4` reports for exactly
    this child."""
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        started = time.monotonic()
        process = subprocess.Popen([str(part) for part in command], stdout=stdout, stderr=stderr, cwd=cwd)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(process.returncode, seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def _memory() -> str:
    with open("/proc/meminfo") as meminfo:
        total_kib = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    return f"{total_kib / KIB_PER_GIB:.1f} GiB"


def _write_report(result: Mapping[str, object], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")


def run_rehearsal(settings: RehearsalSettings, say: Callable[[str], None] = print) -> Dict[str, object]:
    """Runs every step in order, writing the report (OUT/rehearsal.json) after each; raises
    RuntimeError naming the step and its log if one fails, or if the largest peak is over budget."""
    settings.check()
    files = RehearsalFiles(settings.out_dir)
    files.logs.mkdir(parents=True, exist_ok=True)
    files.corpus_definition.write_text(CORPUS_DEFINITION, encoding="utf-8")
    result: Dict[str, object] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine_description(_memory()),
        "settings": asdict(settings), "shape": settings.describe(),
        "config": str(CONFIG_DIR / "finetune" / f"{SHIPPED_CONFIG}.yaml"),
        "training_overrides": training_overrides(settings), "report": str(files.report), "steps": []}
    plan = steps(settings)
    for number, step in enumerate(plan, 1):
        say(f"[{number}/{len(plan)}] {step.name} ...")
        stem = files.logs / f"{number}-{re.sub(r'[^a-z0-9]+', '-', step.name.lower()).strip('-')}"
        stdout_path, stderr_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        run = run_measured(step.command, stdout_path, stderr_path, cwd=files.out)
        record = {"step": step.name, "command": [str(part) for part in step.command], "exit_status": run.exit_status,
                  "wall_s": round(run.wall_seconds, 1), "cpu_s": round(run.cpu_seconds, 1),
                  "peak_rss_kib": run.peak_rss_kib,
                  "peak_rss_gib": round(run.peak_rss_kib / KIB_PER_GIB, 2),
                  "stdout": str(stdout_path), "stderr": str(stderr_path)}
        result["steps"].append(record)
        if run.exit_status == 0:
            record["facts"] = step.facts(stdout_path.read_text())
        _write_report(result, files.report)
        if run.exit_status != 0:
            raise RuntimeError(
                f"step '{step.name}' failed (exit status {run.exit_status}, {record['wall_s']} s, peak RSS "
                f"{record['peak_rss_gib']} GiB); report {files.report}; log {stderr_path}:\n"
                f"{tail(stderr_path.read_text(errors='replace'))}")
        say(f"      {record['wall_s']} s ({record['cpu_s']} s CPU), peak RSS {record['peak_rss_gib']} GiB: "
            f"{_facts_cell(record['facts'])}")
    peak_kib = max(record["peak_rss_kib"] for record in result["steps"])
    result["wall_s"] = round(sum(record["wall_s"] for record in result["steps"]), 1)
    result["cpu_s"] = round(sum(record["cpu_s"] for record in result["steps"]), 1)
    result["peak_rss_gib"] = round(peak_kib / KIB_PER_GIB, 2)
    result["within_budget"] = peak_kib <= settings.budget_gib * KIB_PER_GIB
    _write_report(result, files.report)
    if not result["within_budget"]:
        raise RuntimeError(f"the largest step peaked at {result['peak_rss_gib']} GiB, over the "
                           f"{settings.budget_gib} GiB budget; report {files.report}:\n{format_rehearsal_report(result)}")
    return result


def _facts_cell(facts: Mapping[str, object]) -> str:
    return ", ".join(f"{key} {value:,}" if isinstance(value, int) and not isinstance(value, bool)
                     else f"{key} {value}" for key, value in facts.items())


def format_rehearsal_report(result: Mapping[str, object]) -> str:
    """The rehearsal as a plain-text table: one row per step (wall time, CPU time, peak RSS, what it made)."""
    rows = [("step", "wall s", "CPU s", "peak RSS GiB", "result")]
    rows += [(record["step"], f"{record['wall_s']:.1f}", f"{record['cpu_s']:.1f}", f"{record['peak_rss_gib']:.2f}",
              _facts_cell(record.get("facts", {}))) for record in result["steps"]]
    lines = [f"{result['date']}  {result['machine']}", result["shape"]]
    lines += text_table(rows)
    if "wall_s" in result:
        lines.append(f"total {result['wall_s']:.1f} s ({result['cpu_s']:.1f} s CPU); largest peak {result['peak_rss_gib']:.2f} GiB "
                     f"({'within' if result['within_budget'] else 'OVER'} the {result['settings']['budget_gib']:g} "
                     f"GiB budget); report {result['report']}")
    return "\n".join(lines)


def _step_main(argv: Sequence[str]) -> int:
    """Runs one Python step (`PYTHON_STEPS`) in this process and prints its facts as one JSON line."""
    name, settings_json = argv
    facts = PYTHON_STEPS[name](RehearsalSettings(**json.loads(settings_json)))
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(_step_main(sys.argv[1:]))
