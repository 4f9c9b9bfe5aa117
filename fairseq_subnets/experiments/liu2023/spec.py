"""Liu et al. (2023) grid files: reading, complete validation, and the runs they expand to.

A grid file names one training language, the out-of-domain evaluation languages, one budget of
updates for every run, full fine-tuning (the reference), the tuners compared with it (each with its
shipped `<method>_tiny` config: the paper's settings) and the rank-map run of the paper's Fig. 3
(AdaLoRA over every matrix, initial rank 8, target 4, beside S2-LoRA). Like the other grids it is
checked completely before anything runs, with the engine's reader and checks (engine/grid_file.py): every key's type and
range, unknown keys with the closest known one, languages against the corpus or manifest folders,
and here also the tuner methods and AdaLoRA's options and schedule as the plugin will read them.
Every error names the file, the line of the key and the dotted key.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from ...engine.grid_file import (
    DISTINCT, NON_EMPTY, POSITIVE, GridFile, PretrainedModelGrid, at_least, check_languages,
    check_overrides, checked_grid, read_grid, starting_depth,
)

METHOD = "liu2023"
SECTIONS = ("full", "tuners", "rank_map")
ADALORA = "adalora"
ADALORA_CONFIG_KEYS = {"warmup_updates": "tuner_warmup_updates", "final_updates": "tuner_final_updates",
                       "interval": "tuner_interval"}
"""AdaLoRA's schedule as the shipped adalora_tiny.yaml sets it (its total is the run's updates)."""


def tuner_methods() -> List[str]:
    """Every tuner, in the reports' order (imported when asked: the tuners import torch)."""
    from ...techniques.tuners import TUNERS

    return list(TUNERS)


@dataclass
class FullSpec:
    """Full fine-tuning of every weight (config `tiny`): the reference of the paper's Table 2."""
    lr: float = field(default=0.001, metadata=POSITIVE)
    overrides: List[str] = field(default_factory=list)


@dataclass
class TunersSpec:
    """The tuners on the frozen backbone, each with its shipped `<method>_tiny` config."""
    methods: List[str] = field(default_factory=tuner_methods, metadata={**NON_EMPTY, **DISTINCT})
    lr: float = field(default=0.005, metadata=POSITIVE)
    overrides: List[str] = field(default_factory=list)


@dataclass
class RankMapSpec:
    """Fig. 3: AdaLoRA over `targets` from `init_r` to `target_r`, whose learned ranks are compared
    with S2-LoRA's. An empty `targets` leaves the run out."""
    targets: str = "all"
    init_r: int = field(default=8, metadata=at_least(1))
    target_r: int = field(default=4, metadata=at_least(1))


SECTION_CLASSES = {"full": FullSpec, "tuners": TunersSpec, "rank_map": RankMapSpec}


@dataclass
class GridSpec(PretrainedModelGrid):
    method: str = METHOD
    name: str = METHOD
    language: str = ""
    """The one language every run trains on (the in-domain evaluation: its test set)."""
    out_of_domain: List[str] = field(default_factory=list, metadata=DISTINCT)
    """Languages whose test sets every run is also decoded on (another language, or the same voice
    reading another language's text), with the training language's dictionary."""
    updates: int = field(default=400, metadata=at_least(1))
    """The budget of every run, full fine-tuning included."""
    full: FullSpec = field(default_factory=FullSpec)
    tuners: TunersSpec = field(default_factory=TunersSpec)
    rank_map: RankMapSpec = field(default_factory=RankMapSpec)


def load_grid(path) -> GridSpec:
    """Reads and validates a grid file; every error names the file, the line and the offending key."""
    spec, lines = read_grid(path, GridSpec, SECTION_CLASSES)
    validate(spec, lines)
    return spec


# --------------------------------------------------------------------------------- validation


def validate(spec: GridSpec, lines: Optional[Dict[str, int]] = None) -> None:
    """Checks a grid, read from a file (`lines`: where its keys are) or built in code, completely
    before anything runs."""
    grid = checked_grid(spec, lines, METHOD)
    if not spec.language:
        raise grid.error("language", "name the language every run trains on")
    if spec.language in spec.out_of_domain:
        raise grid.error("out_of_domain", f"{spec.language!r} is the training language: out-of-domain evaluation "
                         "is on other test sets")
    check_tuners(spec, grid)
    for key in ("full.overrides", "tuners.overrides"):
        section, _, leaf = key.partition(".")
        check_overrides(getattr(getattr(spec, section), leaf), key, grid)
    check_languages(spec, grid, {"language": [spec.language], "out_of_domain": spec.out_of_domain})
    if spec.corpus is None:
        for language in spec.out_of_domain:
            check_shared_alphabet(spec, grid, language)
    starting_depth(spec, grid, "the tuners and full fine-tuning start from a pretrained model")


def check_shared_alphabet(spec: GridSpec, grid: GridFile, language: str) -> None:
    """Out-of-domain decoding scores the test set of `language` against references stripped of the
    characters the training language's dictionary lacks (liu2023.cells): a transcript with none of
    its characters would be left empty, which fairseq cannot score, so a language written in
    another alphabet is refused here, before anything trains, naming `out_of_domain`. Synthesized
    corpora (`corpus:`) keep Latin letters only and are not read here: their manifests do not exist
    before the grid runs."""
    from ...data.check import WORD_BOUNDARY
    from .cells import DICTIONARY, dictionary_symbols

    data = Path(spec.data)
    known = dictionary_symbols(data / spec.language / DICTIONARY) - {WORD_BOUNDARY}
    references = data / language / "test.ltr"
    lines = references.read_text(encoding="utf-8").splitlines()
    empty = [number for number, line in enumerate(lines, start=1) if line.strip() and not set(line.split()) & known]
    if empty:
        raise grid.error("out_of_domain", f"language {language!r}: {len(empty)} of {len(lines)} test transcripts "
                         f"({references} line {empty[0]} first) hold no character of the training language's "
                         f"dictionary {data / spec.language / DICTIONARY} (another alphabet?); decoded with it, "
                         "their references would be empty")


def adalora_schedule() -> Dict[str, int]:
    """AdaLoRA's warm-up, final phase and interval in the shipped adalora_tiny.yaml."""
    from ...runner import CONFIG_DIR

    model = yaml.safe_load((CONFIG_DIR / "finetune" / f"{ADALORA}_tiny.yaml").read_text())["model"]
    return {option: model[key] for option, key in ADALORA_CONFIG_KEYS.items()}


def check_tuners(spec: GridSpec, grid: GridFile) -> None:
    """Known methods, and AdaLoRA's options with the shipped schedule over `updates` (the plugin
    would refuse them only once training starts)."""
    from ...techniques.tuners import TUNERS, TunerError, tuner_config

    unknown = [method for method in spec.tuners.methods if method not in TUNERS]
    if unknown:
        raise grid.error("tuners.methods", f"unknown method {unknown[0]!r} (known: {', '.join(TUNERS)})")
    runs = {"tuners.methods": {}} if ADALORA in spec.tuners.methods else {}
    if spec.rank_map.targets:
        rank_map = spec.rank_map
        runs["rank_map"] = {"targets": rank_map.targets, "init_r": rank_map.init_r, "target_r": rank_map.target_r}
    for key, options in runs.items():
        try:
            tuner_config(ADALORA, total_updates=spec.updates, **adalora_schedule(), **options)
        except TunerError as error:
            if error.option in ("total_updates", *ADALORA_CONFIG_KEYS):
                raise grid.error("updates", f"AdaLoRA's schedule in adalora_tiny.yaml: {error.option} "
                                            f"{error.reason}") from None
            raise grid.error(f"rank_map.{error.option}" if key == "rank_map" else key, error.reason) from None


# ------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class TrainingRun:
    """One run of the comparison: full fine-tuning, a tuner with its paper settings, or Fig. 3's
    AdaLoRA; `options` are model.tuner_* keys set over the shipped config."""
    method: str
    config: str
    setting: str
    options: tuple = ()

    def name(self, language: str) -> str:
        label = self.method.replace("_", "-") if not self.options else f"{self.method.replace('_', '-')}-rankmap"
        return f"{label}-{language}"


FULL = "full"
PAPER = "paper"


def plan_runs(spec: GridSpec) -> List[TrainingRun]:
    """Full fine-tuning, every tuner in `tuners.methods`, then Fig. 3's AdaLoRA if `rank_map.targets`."""
    runs = [TrainingRun(FULL, "tiny", "every weight")]
    runs += [TrainingRun(method, f"{method}_tiny", PAPER) for method in spec.tuners.methods]
    rank_map = spec.rank_map
    if rank_map.targets:
        runs.append(TrainingRun(ADALORA, f"{ADALORA}_tiny", f"{rank_map.targets}, rank {rank_map.init_r} to "
                                f"{rank_map.target_r} (Fig. 3)",
                                (("tuner_targets", rank_map.targets), ("tuner_init_r", rank_map.init_r),
                                 ("tuner_target_r", rank_map.target_r))))
    return runs
