"""What a cell's work runs fairseq through: the cell runner in its CellContext.

The default, FairseqRunner, runs the stock commands (fairseq-hydra-train, fairseq-generate) through
fairseq_subnets/runner.py. A grid takes another runner (`GridRun(..., runner=...)`, `run_cells(...,
runner=...)`), so tests replace fairseq by a stand-in with the same three methods without patching
any module. Under submitit the runner travels to the job with the cell's context, so it must pickle.
"""
from pathlib import Path
from typing import Sequence

from ..runner import SINGLE_LANGUAGE_TASK
from .hydra_configs import HydraConfig


class FairseqRunner:
    """The stock fairseq commands (imported when a cell runs them, not when a grid is planned)."""

    def hydra_train(self, config: HydraConfig, overrides: Sequence[str], log_path: Path, world_size: int = 1,
                    threads=None, gpus: int = 0) -> str:
        """fairseq-hydra-train with `config`; returns the log text."""
        from ..runner import hydra_train

        return hydra_train(config.name, list(overrides), log_path, config_dir=config.directory, world_size=world_size,
                           threads=threads, gpus=gpus)

    def generate(self, data_dir, checkpoint, subset: str, results_dir, threads=None,
                 task_args: Sequence[str] = SINGLE_LANGUAGE_TASK):
        """fairseq-generate on `subset`; returns the runner's DecodeResult (cer, wer, hypotheses)."""
        from ..runner import generate

        return generate(data_dir, checkpoint, subset, results_dir, threads=threads, task_args=tuple(task_args))

    def epoch_updates(self, data_dir, max_tokens: int, world_size: int) -> int:
        """fairseq's batch count of one epoch of `data_dir` (builds a fairseq task: about a second)."""
        from ..plugin.tools.epochs import updates_per_epoch

        return updates_per_epoch(data_dir, max_tokens, world_size=world_size)
