"""`subnets_tri_stage`: fairseq's tri-stage learning-rate schedule, restarted at every
lottery-ticket rewind (the iterative_pruning technique).

A lottery-ticket user expects each pruning level to train as the first one did: the weights go
back to the rewind point, Adam's state is emptied, and so the schedule goes back too. After the
rewind of event n at update n x T the schedule continues from the position of the rewind update
K, as if the run had been restarted from its rewind point: position = K + (updates - n x T).
The phases are those of the stock schedule (with `phase_ratio`, fractions of max_update), so set
`warmup_steps` / `hold_steps` / `decay_steps` to fit one level of T updates, as the shipped LTH
configs do. Without rewinding it is exactly `tri_stage`. The pruning settings are read from the
model config (`model.pruning_*`), so it needs `subnets_wav2vec_ctc`.
"""
from dataclasses import dataclass
from typing import Optional

from fairseq.optim.lr_scheduler import register_lr_scheduler
from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRSchedule, TriStageLRScheduleConfig
from omegaconf import II

from ...component_names import PLUGIN_TRI_STAGE
from ...techniques.iterative_pruning.schedule import PruningSchedule


@dataclass
class RestartingTriStageConfig(TriStageLRScheduleConfig):
    pruning_interval: Optional[int] = II("model.pruning_interval")
    pruning_fraction: float = II("model.pruning_fraction")
    pruning_target_sparsity: Optional[float] = II("model.pruning_target_sparsity")
    pruning_rewind_update: Optional[int] = II("model.pruning_rewind_update")


@register_lr_scheduler(PLUGIN_TRI_STAGE, dataclass=RestartingTriStageConfig)
class RestartingTriStageSchedule(TriStageLRSchedule):
    def __init__(self, cfg: RestartingTriStageConfig, optimizer):
        super().__init__(cfg, optimizer)
        rewinds = cfg.pruning_interval is not None and cfg.pruning_rewind_update is not None
        self.pruning_schedule = PruningSchedule(cfg.pruning_interval, cfg.pruning_fraction,
                                                cfg.pruning_target_sparsity) if rewinds else None
        self.rewind_update = cfg.pruning_rewind_update

    def schedule_position(self, num_updates: int) -> int:
        """Where in the stock schedule update `num_updates` falls, given the rewinds before it."""
        events = self.pruning_schedule.events_done(num_updates) if self.pruning_schedule is not None else 0
        if not events:
            return num_updates
        return self.rewind_update + num_updates - events * self.pruning_schedule.interval

    def step_update(self, num_updates):
        return super().step_update(self.schedule_position(num_updates))
