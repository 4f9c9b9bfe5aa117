"""The length a tri-stage learning-rate schedule needs, without fairseq.

fairseq's `tri_stage` schedule (and the plugin's `subnets_tri_stage`), given `phase_ratio`, makes
each phase int(max_update x its share) updates long and divides by the decay phase's length, so a
run too short for one decay update ends in a ZeroDivisionError that names nothing. The plugin's
task refuses such a run before its model is built (`check_tri_stage_phases`), and the grid engine
refuses a grid with a cell that would be one before any cell runs (engine/grid_run.py). Both read
the rule here, which imports neither fairseq nor torch.
"""
from typing import Optional

from .component_names import PLUGIN_TRI_STAGE, STOCK_TRI_STAGE
from .errors import PluginInputError

TRI_STAGE_SCHEDULES = (STOCK_TRI_STAGE, PLUGIN_TRI_STAGE)
DECAY = 2
"""The decay phase's place in `phase_ratio` (warmup, hold, decay)."""


def is_tri_stage(lr_scheduler_cfg) -> bool:
    return lr_scheduler_cfg is not None and lr_scheduler_cfg.get("_name") in TRI_STAGE_SCHEDULES


def empty_decay_phase(lr_scheduler_cfg, max_update) -> Optional[str]:
    """Why a tri-stage schedule whose phases are shares of max_update (`phase_ratio`) gives
    `max_update` updates no decay update, ending with what fixes it; None where it does not (any
    other schedule, phases given in updates, or max_update unset)."""
    if not is_tri_stage(lr_scheduler_cfg):
        return None
    ratios = lr_scheduler_cfg.get("phase_ratio")
    if ratios is None or not max_update or int(max_update * ratios[DECAY]) > 0:
        return None
    return (f"lr_scheduler.phase_ratio={list(ratios)} with optimization.max_update={max_update} gives the decay phase "
            f"0 updates (int({max_update} x {ratios[DECAY]})), which the tri-stage schedule cannot divide by: raise "
            f"optimization.max_update to at least {minimum_updates(ratios[DECAY])}, or the decay share")


def check_tri_stage_phases(lr_scheduler_cfg, max_update) -> None:
    """Refuses a tri-stage schedule whose decay phase has 0 updates, before anything is built. A
    warmup or hold phase of 0 updates is fine (the schedule skips it), as in short test runs."""
    if not is_tri_stage(lr_scheduler_cfg):
        return
    if lr_scheduler_cfg.get("phase_ratio") is None and not lr_scheduler_cfg.get("decay_steps"):
        raise PluginInputError(
            "lr_scheduler.decay_steps=0: the tri-stage schedule needs a decay phase of at least 1 update "
            "(set lr_scheduler.decay_steps, or lr_scheduler.phase_ratio)")
    problem = empty_decay_phase(lr_scheduler_cfg, max_update)
    if problem is not None:
        raise PluginInputError(problem)


def minimum_updates(share: float) -> int:
    """The smallest max_update that gives a phase of `share` at least 1 update."""
    updates = 1
    while int(updates * share) == 0:
        updates += 1
    return updates
