"""Yang et al. (2023) grid files: reading, complete validation, and the runs they expand to.

A grid file names the languages (the paper's comparison needs two or more; the miniature uses
three, one much smaller), the dense multilingual training of θ0 that every run starts from, one
pruning schedule for every pruning run (IMP and LTH, monolingual and
language-agnostic), the multilingual training of the dense baseline, LAP and the pathways, and the
group-lasso strengths compared (Table 2: 0 is "without"). Like the other grids it is checked
completely before anything runs, with the engine's reader and checks (engine/grid_file.py): every key's type and range,
unknown keys with the closest known one, languages against the corpus or manifest folders, and
here also the schedule as the plugin will read it and its last event against each budget of
updates. Every error names the file, the line of the key and the dotted key.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ...engine.grid_file import (
    DISTINCT, NON_EMPTY, POSITIVE, GridFile, PretrainedModelGrid, at_least, check_languages,
    check_overrides, checked_grid, read_grid, starting_depth,
)

METHOD = "yang2023"
SECTIONS = ("theta0", "pruning", "multilingual")


@dataclass
class Theta0Spec:
    """The dense multilingual training that makes θ0, the model every other run starts from (the
    paper's design: LSP, LAP and the pathways begin at the dense model, and LTH rewinds to it); one
    θ0 per group-lasso strength, the paper's dense model with and without group lasso."""
    updates: int = field(default=1000, metadata=at_least(1))
    lr: float = field(default=0.001, metadata=POSITIVE)
    overrides: List[str] = field(default_factory=list)


@dataclass
class PruningSpec:
    """The schedule of every pruning run (plugin model.pruning_*), the budget of the monolingual
    ones (LSP) and their learning rate; LAP prunes with the same schedule in multilingual training."""
    updates: int = field(default=350, metadata=at_least(1))
    interval: int = field(default=50, metadata=at_least(1))
    fraction: float = field(default=0.2, metadata=POSITIVE)
    target_sparsity: float = field(default=0.6, metadata=POSITIVE)
    criterion: str = "block"
    scope: str = "layer"
    lr: float = field(default=0.001, metadata=POSITIVE)
    overrides: List[str] = field(default_factory=list)


@dataclass
class MultilingualSpec:
    """Multilingual training in monolingual batches from θ0: the dense baseline (θ0 trained on for
    the same budget), LAP and the pathways."""
    updates: int = field(default=400, metadata=at_least(1))
    lr: float = field(default=0.001, metadata=POSITIVE)
    alpha: float = 0.5
    overrides: List[str] = field(default_factory=list)


SECTION_CLASSES = {"theta0": Theta0Spec, "pruning": PruningSpec, "multilingual": MultilingualSpec}


@dataclass
class GridSpec(PretrainedModelGrid):
    method: str = METHOD
    name: str = METHOD
    languages: List[str] = field(default_factory=list, metadata={**NON_EMPTY, **DISTINCT})
    group_lasso: List[float] = field(default_factory=lambda: [0.0, 0.01], metadata={**NON_EMPTY, **DISTINCT})
    """Group-lasso strengths (model.group_lasso_strength) of θ0, the dense baseline and the pruning
    runs; 0: without."""
    theta0: Theta0Spec = field(default_factory=Theta0Spec)
    pruning: PruningSpec = field(default_factory=PruningSpec)
    multilingual: MultilingualSpec = field(default_factory=MultilingualSpec)


def load_grid(path) -> GridSpec:
    """Reads and validates a grid file; every error names the file, the line and the offending key."""
    spec, lines = read_grid(path, GridSpec, SECTION_CLASSES)
    validate(spec, lines)
    return spec


def validate(spec: GridSpec, lines: Optional[Dict[str, int]] = None) -> None:
    """Everything before anything runs, on a grid read from a file (`lines`: where its keys are)
    or built in code: the keys, the languages, the schedule and the budgets it must fit in."""
    grid = checked_grid(spec, lines, METHOD)
    if len(spec.languages) < 2:
        raise grid.error("languages", "pathways share weights between languages: name two or more")
    negative = [value for value in spec.group_lasso if value < 0]
    if negative:
        raise grid.error("group_lasso", f"{negative[0]:g} is negative (0: without group lasso)")
    if spec.multilingual.alpha < 0:
        raise grid.error("multilingual.alpha", f"{spec.multilingual.alpha:g} is negative (0: uniform sampling)")
    schedule = check_schedule(spec, grid)
    for section, budget in (("pruning", spec.pruning.updates), ("multilingual", spec.multilingual.updates)):
        if budget < schedule.final_update:
            raise grid.error(f"{section}.updates", f"{budget} ends before the last pruning event (update "
                             f"{schedule.final_update}: {schedule.events} events every {schedule.interval} updates)")
    for section in SECTIONS:
        check_overrides(getattr(spec, section).overrides, f"{section}.overrides", grid)
    check_languages(spec, grid, {"languages": spec.languages})
    starting_depth(spec, grid, "every run starts from a pretrained model")


def check_schedule(spec: GridSpec, grid: GridFile):
    """The pruning section as the plugin reads it (model.pruning_* keys); returns the schedule."""
    from ...techniques.iterative_pruning.schedule import PRUNING_CRITERIA, PRUNING_SCOPES, PruningSchedule

    pruning = spec.pruning
    for key, choices in (("criterion", PRUNING_CRITERIA), ("scope", PRUNING_SCOPES)):
        if getattr(pruning, key) not in choices:
            raise grid.error(f"pruning.{key}", f"{getattr(pruning, key)!r}: choose one of {', '.join(choices)}")
    try:
        return PruningSchedule(pruning.interval, pruning.fraction, pruning.target_sparsity)
    except ValueError as error:  # "<field>=<value>: <problem>"
        assignment, _, problem = str(error).partition(": ")
        raise grid.error(f"pruning.{assignment.split('=')[0]}", problem) from None


# ------------------------------------------------------------------------------------- planning

DENSE, LAP, LSP_IMP, LSP_LTH = "dense", "lap", "lsp-imp", "lsp-lth"
PATHWAYS_RANDOM, PATHWAYS_IMP, PATHWAYS_LTH = "pathways-random", "pathways-imp", "pathways-lth"
MODELS = (DENSE, LAP, LSP_IMP, LSP_LTH, PATHWAYS_RANDOM, PATHWAYS_IMP, PATHWAYS_LTH)
"""The rows of the paper's Table 1, in its order."""
WITH_GROUP_LASSO = (DENSE, LAP, LSP_IMP, LSP_LTH, PATHWAYS_IMP, PATHWAYS_LTH)
"""The models group lasso changes (Table 2): trained with it from a θ0 trained with it, or on the masks
of pruning runs that were; the random masks depend on no training."""


def lasso_label(strength: float) -> str:
    """'gl0', 'gl0.01': a group-lasso strength in a cell name."""
    return f"gl{strength:g}"
