"""The language-subnetwork experiment grid of Storey et al. (2025), run through stock fairseq.

A grid file names upstream languages, downstream languages, sparsities, mask sources and seeds.
Running it: (1) synthesize the corpus or take an existing one, (2) pretrain a tiny wav2vec2 unless a
pretrained checkpoint is given, (3) fine-tune one upstream CTC model per language (best checkpoint
by validation loss), (4) prune each upstream model, the pretrained one (`base`) and random
baselines to every sparsity, (5) fine-tune one downstream cell per (upstream, downstream,
sparsity, mask source, seed) with `model.init_from` and the mask fixed, (6) decode every test set
with fairseq-generate and write one results table (`results.csv`, `results.json`) plus the IOU
between language subnetworks (`iou.csv`).

Every training or decoding step is a stock fairseq subprocess. A cell is finished when its
`result.json` exists (written atomically, after decoding); a rerun skips finished cells, and an
unfinished cell runs its same command again, which fairseq resumes from checkpoint_last.pt. Decoding
output of an unfinished cell is never reused. A cell whose configuration changed is started anew.
"""
import itertools
import json
import math
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from . import USER_DIR
from .atomic import write_atomically
from .runner import CONFIG_DIR, generate, hydra_train

SOURCES = ("own", "swap", "union", "base", "random")
RESULT_COLUMNS = (
    "cell", "stage", "upstream", "downstream", "sparsity", "source", "mask_language", "seed", "cer", "wer",
    "test_utterances", "mask_sparsity", "updates", "checkpoint", "mask_path", "train_seconds", "decode_seconds",
)
MANIFEST_FILES = ("train.tsv", "train.ltr", "valid.tsv", "valid.ltr", "test.tsv", "test.ltr", "dict.ltr.txt")


class GridError(ValueError):
    """The grid file is unusable; the message names the file and the key."""


@dataclass
class UpstreamSpec:
    languages: List[str] = field(default_factory=list)
    updates: int = 800
    lr: float = 0.0005
    overrides: List[str] = field(default_factory=list)
    checkpoints: Dict[str, str] = field(default_factory=dict)
    """Already fine-tuned upstream models by language: evaluated and pruned, not trained again."""


@dataclass
class PruneSpec:
    method: str = "global-l1"
    sparsities: List[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])
    targets: str = "all"
    layers: str = "all"


@dataclass
class DownstreamSpec:
    languages: List[str] = field(default_factory=list)
    sources: List[str] = field(default_factory=lambda: ["own"])
    source_sparsities: Optional[List[float]] = None
    """Sparsities at which sources other than `own` run (default: every non-zero sparsity)."""
    epochs: int = 2
    freeze_epochs: int = 1
    lr: float = 0.0005
    max_tokens: int = 400000
    world_size: int = 1
    overrides: List[str] = field(default_factory=list)


@dataclass
class GridSpec:
    path: str = ""
    name: str = "grid"
    corpus: Optional[str] = None
    data: Optional[str] = None
    pretrained: Optional[str] = None
    pretrain_updates: int = 600
    seeds: List[int] = field(default_factory=lambda: [1])
    upstream: UpstreamSpec = field(default_factory=UpstreamSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    downstream: DownstreamSpec = field(default_factory=DownstreamSpec)
    iou_sparsities: Optional[List[float]] = None


# ------------------------------------------------------------------------------------ grid file


def _section(raw, spec_class, where, path):
    if raw is None:
        return spec_class()
    if not isinstance(raw, dict):
        raise GridError(f"{path}: {where} must be a mapping")
    known = {f.name for f in fields(spec_class)} - {"path"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GridError(f"{path}: unknown key {where + '.' if where else ''}{unknown[0]} (known: {', '.join(sorted(known))})")
    return spec_class(**raw)


def load_grid(path) -> GridSpec:
    """Reads and validates a grid file; every error names the file and the offending key."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise GridError(f"{path}: no such grid file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise GridError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: the grid file must be a mapping of keys")
    sections = {key: raw.pop(key, None) for key in ("upstream", "prune", "downstream")}
    spec = _section(raw, GridSpec, "", path)
    spec.path = path
    spec.upstream = _section(sections["upstream"], UpstreamSpec, "upstream", path)
    spec.prune = _section(sections["prune"], PruneSpec, "prune", path)
    spec.downstream = _section(sections["downstream"], DownstreamSpec, "downstream", path)
    validate(spec)
    return spec


def _check_sparsities(values, key, path):
    if not isinstance(values, list) or not values:
        raise GridError(f"{path}: {key} must be a non-empty list of sparsities")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise GridError(f"{path}: {key}: {value!r} is outside [0, 1)")


def validate(spec: GridSpec) -> None:
    path = spec.path
    if (spec.corpus is None) == (spec.data is None):
        raise GridError(f"{path}: give exactly one of corpus (a corpus definition to synthesize) or data "
                        "(a directory with one manifest folder per language)")
    for key, languages in (("upstream.languages", spec.upstream.languages),
                           ("downstream.languages", spec.downstream.languages)):
        if not isinstance(languages, list) or not languages:
            raise GridError(f"{path}: {key} must be a non-empty list of language codes")
    _check_sparsities(spec.prune.sparsities, "prune.sparsities", path)
    for key in ("source_sparsities",):
        if getattr(spec.downstream, key) is not None:
            _check_sparsities(getattr(spec.downstream, key), f"downstream.{key}", path)
    if spec.iou_sparsities is not None:
        _check_sparsities(spec.iou_sparsities, "iou_sparsities", path)
    for number_key, value, minimum in (
        ("upstream.updates", spec.upstream.updates, 1), ("downstream.epochs", spec.downstream.epochs, 1),
        ("downstream.freeze_epochs", spec.downstream.freeze_epochs, 0),
        ("downstream.world_size", spec.downstream.world_size, 1), ("pretrain_updates", spec.pretrain_updates, 1),
    ):
        if not isinstance(value, int) or value < minimum:
            raise GridError(f"{path}: {number_key} must be an integer >= {minimum}, got {value!r}")
    if not spec.seeds or not all(isinstance(seed, int) for seed in spec.seeds):
        raise GridError(f"{path}: seeds must be a non-empty list of integers")
    for source in spec.downstream.sources:
        kind, _, partner = str(source).partition(":")
        if kind not in SOURCES:
            raise GridError(f"{path}: downstream.sources: unknown source {source!r} (known: {', '.join(SOURCES)}; "
                            "swap and union take an optional :LANGUAGE)")
        if partner and (kind not in ("swap", "union") or partner not in spec.upstream.languages):
            raise GridError(f"{path}: downstream.sources: {source!r}: only swap/union take a language, and it must "
                            f"be one of upstream.languages ({', '.join(spec.upstream.languages)})")
    from .core.pruning import METHODS

    if spec.prune.method not in METHODS:
        raise GridError(f"{path}: prune.method {spec.prune.method!r} is not one of {', '.join(METHODS)}")
    if spec.pretrained is not None and not os.path.isfile(spec.pretrained):
        raise GridError(f"{path}: pretrained: {spec.pretrained} does not exist")
    for language, checkpoint in spec.upstream.checkpoints.items():
        if language not in spec.upstream.languages:
            raise GridError(f"{path}: upstream.checkpoints.{language}: {language} is not in upstream.languages")
        if not os.path.isfile(checkpoint):
            raise GridError(f"{path}: upstream.checkpoints.{language}: {checkpoint} does not exist")
    check_languages(spec)


def check_languages(spec: GridSpec) -> None:
    """Every language must exist in the corpus definition, or have a complete manifest folder."""
    languages = list(dict.fromkeys(spec.upstream.languages + spec.downstream.languages))
    if spec.corpus is not None:
        from .data.corpora import load_definition
        from .data.errors import DataError

        try:
            definition = load_definition(spec.corpus)
        except DataError as error:
            raise GridError(f"{spec.path}: corpus: {error}") from None
        unknown = [language for language in languages if language not in definition.languages]
        if unknown:
            raise GridError(f"{spec.path}: language {unknown[0]!r} is not in corpus {spec.corpus} "
                            f"(it has {', '.join(definition.languages)})")
        return
    for language in languages:
        for name in MANIFEST_FILES:
            manifest = Path(spec.data) / language / name
            if not manifest.is_file():
                raise GridError(f"{spec.path}: language {language!r}: missing manifest {manifest}")
    if spec.pretrained is None and not (Path(spec.data) / "pretrain" / "train.tsv").is_file():
        raise GridError(f"{spec.path}: no pretrained checkpoint given and no {Path(spec.data) / 'pretrain' / 'train.tsv'} "
                        "to pretrain on")


# ------------------------------------------------------------------------------------- planning


def sparsity_label(sparsity):
    return f"{sparsity:.2f}"


@dataclass(frozen=True)
class Cell:
    """One downstream fine-tuning run and its evaluation."""

    upstream: str
    downstream: str
    sparsity: float
    source: str
    partner: str
    seed: int

    @property
    def mask_language(self):
        if self.sparsity == 0:
            return ""
        return {"own": self.upstream, "swap": self.partner, "union": f"{self.upstream}+{self.partner}",
                "base": "base", "random": "random"}[self.source]

    @property
    def name(self):
        source = f"{self.source}_{self.partner}" if self.partner else self.source
        return f"{self.upstream}-{self.downstream}-s{sparsity_label(self.sparsity)}-{source}-seed{self.seed}"


def plan_cells(spec: GridSpec) -> List[Cell]:
    """Every downstream cell; at sparsity 0 all sources are the unmasked model, so only `own` runs."""
    down = spec.downstream
    source_sparsities = down.source_sparsities or [s for s in spec.prune.sparsities if s > 0]
    cells = []
    for seed, upstream, downstream, sparsity in itertools.product(
        spec.seeds, spec.upstream.languages, down.languages, spec.prune.sparsities
    ):
        for source in down.sources:
            kind, _, partner = str(source).partition(":")
            if kind != "own" and (sparsity == 0 or sparsity not in source_sparsities):
                continue
            if kind in ("swap", "union"):
                partners = [partner] if partner else [lang for lang in spec.upstream.languages if lang != upstream]
                cells += [Cell(upstream, downstream, sparsity, kind, p, seed) for p in partners if p != upstream]
            else:
                cells.append(Cell(upstream, downstream, sparsity, kind, "", seed))
    return list(dict.fromkeys(cells))


# ------------------------------------------------------------------------------------- running


@dataclass
class GridRun:
    spec: GridSpec
    out_dir: Path
    jobs: int = 1
    say: object = print
    progress: object = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    rows: dict = field(default_factory=dict)
    _updates_per_epoch: dict = field(default_factory=dict)

    @property
    def threads_per_job(self):
        return max(1, (os.cpu_count() or 1) // self.jobs)

    # ---- inputs

    def corpus_dir(self) -> Path:
        if self.spec.data is not None:
            return Path(self.spec.data).resolve()
        from .data.corpora import corpus_path
        from .data.synth import synthesize_corpus

        return Path(synthesize_corpus(corpus_path(self.spec.corpus), self.out_dir / "corpus", progress=False, jobs=max(1, self.jobs)))

    def pretrained(self, corpus: Path) -> Path:
        if self.spec.pretrained is not None:
            return Path(self.spec.pretrained).resolve()
        pretrain_dir = self.out_dir / "pretrain"
        done = pretrain_dir / "checkpoint_last.pt"
        if not (pretrain_dir / "done").exists():
            hydra_train("tiny", [
                f"task.data={corpus / 'pretrain'}", f"checkpoint.save_dir={pretrain_dir}",
                f"optimization.max_update={self.spec.pretrain_updates}", f"common.seed={self.spec.seeds[0]}",
            ], pretrain_dir / "train.log", config_dir=CONFIG_DIR / "pretrain")
            write_atomically(pretrain_dir / "done", b"")
        return done

    # ---- cells

    def run_cached(self, cell_dir: Path, config: dict, work):
        """Returns the stored result of a finished cell with the same config, else runs `work`."""
        result_file, config_file = cell_dir / "result.json", cell_dir / "cell.json"
        if result_file.exists() and config_file.exists() and json.loads(config_file.read_text()) == config:
            return json.loads(result_file.read_text())
        if config_file.exists() and json.loads(config_file.read_text()) != config:
            self.say(f"[grid] {cell_dir.name}: configuration changed, starting it anew")
            shutil.rmtree(cell_dir)
        for stale in (result_file, cell_dir / "decode"):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        cell_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(config_file, json.dumps(config, indent=2, sort_keys=True).encode())
        result = work()
        write_atomically(result_file, json.dumps(result, indent=2).encode())
        return result

    def decode(self, data_dir, checkpoint, cell_dir):
        started = time.monotonic()
        decoded = generate(data_dir, checkpoint, "test", cell_dir / "decode", threads=self.threads_per_job)
        return {"cer": round(decoded.cer, 2), "wer": round(decoded.wer, 2), "test_utterances": decoded.hypotheses,
                "decode_seconds": round(time.monotonic() - started, 1)}

    def upstream_cell(self, language, seed, corpus, pretrained):
        cell_dir = self.out_dir / "upstream" / f"{language}-seed{seed}"
        up = self.spec.upstream
        given = up.checkpoints.get(language)
        overrides = [
            f"common.user_dir={USER_DIR}", f"task.data={corpus / language}", f"model.w2v_path={pretrained}",
            f"checkpoint.save_dir={cell_dir}", f"optimization.max_update={up.updates}",
            f"optimization.lr=[{up.lr}]", f"common.seed={seed}", *up.overrides,
        ]

        def work():
            started = time.monotonic()
            if not given:
                hydra_train("tiny", overrides, cell_dir / "train.log", threads=self.threads_per_job)
            train_seconds = round(time.monotonic() - started, 1)
            checkpoint = Path(given).resolve() if given else cell_dir / "checkpoint_best.pt"
            return {"cell": f"upstream-{language}-seed{seed}", "stage": "upstream", "upstream": language,
                    "downstream": language, "sparsity": 0.0, "source": "none", "mask_language": "", "seed": seed,
                    "mask_sparsity": 0.0, "updates": 0 if given else up.updates, "checkpoint": str(checkpoint),
                    "mask_path": "", "train_seconds": train_seconds,
                    **self.decode(corpus / language, checkpoint, cell_dir)}

        return self.run_cached(cell_dir, {"checkpoint": str(given)} if given else {"overrides": overrides}, work)

    def updates_per_epoch(self, data_dir: Path) -> int:
        """fairseq's batch count of an epoch of `data_dir`, computed once per language (it builds a
        fairseq task, about a second, and every cell's configuration needs it)."""
        from .plugin.epochs import updates_per_epoch

        down = self.spec.downstream
        if data_dir not in self._updates_per_epoch:  # two cells computing it at once is harmless
            self._updates_per_epoch[data_dir] = updates_per_epoch(data_dir, down.max_tokens, world_size=down.world_size)
        return self._updates_per_epoch[data_dir]

    def downstream_cell(self, cell: Cell, corpus, pretrained, upstream_checkpoints, masks):
        down = self.spec.downstream
        cell_dir = self.out_dir / "cells" / cell.name
        new_language = cell.downstream != cell.upstream
        frozen = down.freeze_epochs if new_language else 0
        epochs = frozen + down.epochs
        per_epoch = self.updates_per_epoch(corpus / cell.downstream)
        mask_path, mask_sparsity = masks.get(cell, ("", 0.0))
        overrides = [
            f"common.user_dir={USER_DIR}", f"task.data={corpus / cell.downstream}", f"model.w2v_path={pretrained}",
            f"+model.init_from={upstream_checkpoints[(cell.upstream, cell.seed)]}",
            f"+model.freeze_encoder_epochs={frozen}", f"checkpoint.save_dir={cell_dir}",
            f"optimization.max_epoch={epochs}", f"optimization.max_update={epochs * per_epoch}",
            f"optimization.lr=[{down.lr}]", f"dataset.max_tokens={down.max_tokens}", f"common.seed={cell.seed}",
            "checkpoint.save_interval=1", *down.overrides,
        ]
        if mask_path:
            overrides.append(f"+model.mask_path={mask_path}")

        def work():
            started = time.monotonic()
            hydra_train("tiny", overrides, cell_dir / "train.log", world_size=down.world_size, threads=self.threads_per_job)
            train_seconds = round(time.monotonic() - started, 1)
            checkpoint = cell_dir / "checkpoint_last.pt"
            return {"cell": cell.name, "stage": "downstream", "upstream": cell.upstream,
                    "downstream": cell.downstream, "sparsity": cell.sparsity, "source": cell.source,
                    "mask_language": cell.mask_language, "seed": cell.seed, "mask_sparsity": mask_sparsity,
                    "updates": epochs * per_epoch, "checkpoint": str(checkpoint), "mask_path": str(mask_path),
                    "train_seconds": train_seconds, **self.decode(corpus / cell.downstream, checkpoint, cell_dir)}

        return self.run_cached(cell_dir, {"overrides": overrides}, work)

    # ---- masks

    def build_masks(self, cells, pretrained, upstream_checkpoints):
        """Mask file and its actual sparsity for every masked cell, plus the own/base masks by
        (label, sparsity) for the IOU table. Existing files are reused (they are written atomically)."""
        from .plugin.prune import prune_checkpoint
        from .core import stats
        from .core.maskfile import load_mask_file, save_mask_file

        mask_dir = self.out_dir / "masks"
        mask_dir.mkdir(parents=True, exist_ok=True)
        prune = self.spec.prune

        def pruned(checkpoint, label, sparsity, method=prune.method, seed=0):
            path = mask_dir / f"{label}-s{sparsity_label(sparsity)}.mask"
            if not path.exists():
                prune_checkpoint(str(checkpoint), str(path), method, sparsity, prune.targets, prune.layers, seed=seed)
            return path

        def own(language, seed, sparsity):
            return pruned(upstream_checkpoints[(language, seed)], f"{language}-seed{seed}", sparsity)

        def union(cell):
            path = mask_dir / f"{cell.upstream}+{cell.partner}-seed{cell.seed}-s{sparsity_label(cell.sparsity)}.mask"
            if not path.exists():
                parts = [load_mask_file(str(own(lang, cell.seed, cell.sparsity))).masks for lang in (cell.upstream, cell.partner)]
                save_mask_file(str(path), stats.union(*parts), {"method": "union", "sparsity": cell.sparsity,
                                                                 "parts": f"{cell.upstream},{cell.partner}"})
            return path

        chooser = {
            "own": lambda cell: own(cell.upstream, cell.seed, cell.sparsity),
            "swap": lambda cell: own(cell.partner, cell.seed, cell.sparsity),
            "union": union,
            "base": lambda cell: pruned(pretrained, "base", cell.sparsity),
            "random": lambda cell: pruned(pretrained, f"random-seed{cell.seed}", cell.sparsity, "random", cell.seed),
        }
        masks = {}
        for cell in cells:
            if cell.sparsity > 0:
                path = chooser[cell.source](cell)
                masks[cell] = (str(path), round(stats.sparsity(load_mask_file(str(path)).masks), 6))
        iou_masks = {}
        for sparsity in self.spec.iou_sparsities or [s for s in prune.sparsities if s > 0]:
            iou_masks[("base", sparsity)] = pruned(pretrained, "base", sparsity)
            for language in self.spec.upstream.languages:
                iou_masks[(language, sparsity)] = own(language, self.spec.seeds[0], sparsity)
        return masks, iou_masks

    def iou_rows(self, iou_masks):
        from .core import stats
        from .core.maskfile import load_mask_file

        rows = []
        for sparsity in sorted({s for _, s in iou_masks}):
            labels = [label for label, s in iou_masks if s == sparsity]
            loaded = {label: load_mask_file(str(iou_masks[(label, sparsity)])).masks for label in labels}
            for a, b in itertools.combinations(labels, 2):
                rows.append({"sparsity": sparsity, "a": a, "b": b, "iou": round(stats.iou(loaded[a], loaded[b]), 6)})
        return rows

    # ---- results

    def record(self, row):
        with self._lock:
            self.rows[row["cell"]] = row
            if self.progress is not None:
                self.progress.update(1)

    def write_results(self, planned_rows, iou_rows):
        """results.csv / results.json: every planned cell, finished or not (cer empty when not)."""
        rows = [self.rows.get(row["cell"], row) for row in planned_rows]
        write_table(self.out_dir / "results.csv", RESULT_COLUMNS, rows)
        write_table(self.out_dir / "iou.csv", ("sparsity", "a", "b", "iou"), iou_rows)
        payload = {"grid": str(Path(self.spec.path).resolve()), "grid_spec": asdict(self.spec),
                   "cells": rows, "iou": iou_rows}
        write_atomically(self.out_dir / "results.json", json.dumps(payload, indent=2).encode())

    def run(self):
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        corpus = self.corpus_dir()
        self.say(f"[grid] corpus: {corpus}")
        pretrained = self.pretrained(corpus)
        self.say(f"[grid] pretrained model: {pretrained}")
        cells = plan_cells(self.spec)
        upstream_keys = list(itertools.product(self.spec.upstream.languages, self.spec.seeds))
        planned = [placeholder_row(f"upstream-{lang}-seed{seed}", "upstream", lang, lang, 0.0, "none", "", seed)
                   for lang, seed in upstream_keys]
        planned += [placeholder_row(c.name, "downstream", c.upstream, c.downstream, c.sparsity, c.source,
                                    c.mask_language, c.seed) for c in cells]
        self.say(f"[grid] {len(upstream_keys)} upstream models, {len(cells)} downstream cells, {self.jobs} at a time")
        iou_rows = []
        try:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                upstream_rows = list(pool.map(lambda key: self.upstream_cell(*key, corpus, pretrained), upstream_keys))
            for row in upstream_rows:
                self.record(row)
            checkpoints = {(row["upstream"], row["seed"]): row["checkpoint"] for row in upstream_rows}
            masks, iou_masks = self.build_masks(cells, pretrained, checkpoints)
            iou_rows = self.iou_rows(iou_masks)
            self.write_results(planned, iou_rows)

            def downstream(cell):
                row = self.downstream_cell(cell, corpus, pretrained, checkpoints, masks)
                self.record(row)
                with self._lock:
                    self.write_results(planned, iou_rows)
                return row

            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                list(pool.map(downstream, cells))
        finally:
            self.write_results(planned, iou_rows)
        return out / "results.csv"


def placeholder_row(cell, stage, upstream, downstream, sparsity, source, mask_language, seed):
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(cell=cell, stage=stage, upstream=upstream, downstream=downstream, sparsity=sparsity,
               source=source, mask_language=mask_language, seed=seed)
    return row


def write_table(path, columns, rows):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue().encode())
