"""The general demo job, shared by every method: synthesize speech, pretrain a tiny wav2vec2,
fine-tune it with CTC on one language through the plugin, decode the test split with stock
fairseq-generate. `fairseq-subnets demo` then runs a method's slice on that model (Storey et al.
2025: `run_subnet_slice` in experiments/storey2025/cells.py), and the tests reuse its checkpoints.

Each stage is a stock fairseq command; a rerun of the same call resumes from what is on disk
(synthesis skips finished utterances, fairseq resumes from checkpoint_last.pt).
"""
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import USER_DIR
from .atomic import write_atomically
from .data.corpora import corpus_path
from .data.synth import synthesize_corpus
from .runner import CONFIG_DIR, generate, hydra_train


@dataclass
class SkeletonSettings:
    out_dir: Path
    corpus: str = "demo"
    language: str = "es"
    pretrain_updates: int = 900
    finetune_updates: int = 1500
    finetune_lr: float = 0.0005
    finetune_phase_ratio: tuple = (0.1, 0.4, 0.5)
    seed: int = 1
    jobs: int = 2
    extra_finetune_overrides: list = field(default_factory=list)


@dataclass
class SkeletonResult:
    corpus_dir: str
    pretrained_checkpoint: str
    finetuned_checkpoint: str
    test_cer: float
    test_wer: float
    test_utterances: int
    seconds: dict


def run_skeleton(settings: SkeletonSettings, say=print):
    out = Path(settings.out_dir).resolve()
    seconds = {}

    def stage(name, action):
        say(f"[demo] {name} ...")
        started = time.monotonic()
        result = action()
        seconds[name] = round(time.monotonic() - started, 1)
        say(f"[demo] {name}: {seconds[name]} s")
        return result

    corpus_dir = stage("synthesize", lambda: Path(synthesize_corpus(
        corpus_path(settings.corpus), out / "corpus", seed=settings.seed, jobs=settings.jobs)))
    pretrain_dir = out / "pretrain"
    stage("pretrain", lambda: hydra_train("tiny", [
        f"common.user_dir={USER_DIR}",
        f"task.data={corpus_dir / 'pretrain'}",
        f"checkpoint.save_dir={pretrain_dir}",
        f"optimization.max_update={settings.pretrain_updates}",
        f"common.seed={settings.seed}",
    ], pretrain_dir / "train.log", config_dir=CONFIG_DIR / "pretrain"))
    finetune_dir = out / f"finetune_{settings.language}"
    stage("finetune", lambda: hydra_train("tiny", [
        f"common.user_dir={USER_DIR}",
        f"task.data={corpus_dir / settings.language}",
        f"model.w2v_path={pretrain_dir / 'checkpoint_last.pt'}",
        f"checkpoint.save_dir={finetune_dir}",
        f"optimization.max_update={settings.finetune_updates}",
        f"optimization.lr=[{settings.finetune_lr}]",
        "lr_scheduler.phase_ratio=[" + ",".join(map(str, settings.finetune_phase_ratio)) + "]",
        f"common.seed={settings.seed}",
        *settings.extra_finetune_overrides,
    ], finetune_dir / "train.log"))
    checkpoint = finetune_dir / "checkpoint_best.pt"
    decoded = stage("decode", lambda: generate(
        corpus_dir / settings.language, checkpoint, "test", finetune_dir / "decode"))
    result = SkeletonResult(
        corpus_dir=str(corpus_dir),
        pretrained_checkpoint=str(pretrain_dir / "checkpoint_last.pt"),
        finetuned_checkpoint=str(checkpoint),
        test_cer=round(decoded.cer, 2),
        test_wer=round(decoded.wer, 2),
        test_utterances=decoded.hypotheses,
        seconds=seconds,
    )
    write_atomically(out / "summary.json", (json.dumps(asdict(result), indent=2) + "\n").encode())
    return result
