"""The "Grid files and training" catalogue of docs/bad-inputs.md, one test per row.

Grid files are checked in-process by `fairseq-subnets grid`, before any cell runs. Training inputs
are checked by our task and model while fairseq-hydra-train builds the run, on untrained tiny
checkpoints: each case is built in this process exactly as that command builds it (the shipped
config composed with the case's overrides, converted as fairseq converts it, then the task, the
model and the criterion built through fairseq's entry points) and must be refused with the
documented message before anything is written. Our one-line errors exist only in the real
commands, so each error path (where the build is refused, and the error's family) is also run as
a real fairseq-hydra-train, as is the decoding case as a real fairseq-generate (forked from the
session's fork server, tests/forked_commands.py): exit status 2, a last stderr line that starts
with the documented message and names the culprit, no traceback, and no checkpoint or output
folder written. The pytest ids are the catalogue ids; `<NAME>` in a message stands for a path the
test substitutes.
"""
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Sequence

import pytest

from fairseq_subnets import USER_DIR
from fairseq_subnets.cli.main import main
from fairseq_subnets.engine.grid_file import MANIFEST_FILES
from fairseq_subnets.runner import CONFIG_DIR, fairseq_command
from grid_files import write_grid, write_grid_inputs, write_pretrained

GRID_ERROR = "fairseq-subnets grid: error: <GRID>"
TRAIN_ERROR = "fairseq-hydra-train: error: "
EXIT_STATUS = 2


@dataclass(frozen=True)
class GridCase:
    id: str
    message: str
    """The stable prefix of the last stderr line; it names the grid file (and the key)."""
    grid: Dict[str, str] = field(default_factory=dict)
    """write_grid arguments; `text` instead writes the file as it is (placeholders substituted)."""
    out: str = "out"
    """`--out`, relative to the case's folder (`<OUT>` in the message)."""
    existing_file: str = ""
    """A file made in the case's folder first (`<FILE>` in the message)."""


GRID_CASES = [
    GridCase("grid-missing", GRID_ERROR + ": no such grid file", {"text": None}),
    GridCase("grid-not-yaml", GRID_ERROR + ":3: not valid YAML (expected ',' or '}'",
             {"text": "name: broken\nupstream: {languages: [es]\ndownstream: x\n"}),
    GridCase("grid-unknown-key", GRID_ERROR + ":10: downstream.epoch: unknown key (did you mean downstream.epochs?)",
             {"downstream": "languages: [es, ca]\nepoch: 3"}),
    GridCase("grid-key-twice", GRID_ERROR + ":8: prune.sparsities: given twice (first on line 7)",
             {"prune": "sparsities: [0.5]\nsparsities: [0.9]"}),
    GridCase("grid-prune-targets", GRID_ERROR + ":8: prune.targets: unknown module kind 'foo'",
             {"prune": "sparsities: [0.5]\ntargets: foo"}),
    GridCase("grid-prune-layers-beyond-model", GRID_ERROR + ":8: prune.layers: layer 99 is selected but pretrained "
             "<PRETRAINED> has 2 encoder layers (0-1)", {"prune": "sparsities: [0.5]\nlayers: '0,99'"}),
    GridCase("grid-prune-layers-bare-number", GRID_ERROR + ":8: prune.layers: expected a string, got 99 (YAML reads "
             "bare words", {"prune": "sparsities: [0.5]\nlayers: 99"}),
    GridCase("grid-lr-not-a-number", GRID_ERROR + ":6: upstream.lr: expected a number, got 'fast'",
             {"upstream": "languages: [es, ca]\nlr: fast"}),
    GridCase("grid-max-tokens-negative", GRID_ERROR + ":10: downstream.max_tokens: must be at least 1, got -5",
             {"downstream": "languages: [es, ca]\nmax_tokens: -5"}),
    GridCase("grid-seeds-not-a-list", GRID_ERROR + ":10: seeds: expected a list of integers, got 1",
             {"extra": "seeds: 1"}),
    GridCase("grid-sources-not-a-list", GRID_ERROR + ":10: downstream.sources: expected a list of strings, got 'own'",
             {"downstream": "languages: [es, ca]\nsources: own"}),
    GridCase("grid-language-unquoted", GRID_ERROR + ":5: upstream.languages: expected a list of strings, got "
             "['es', False] (YAML reads bare words", {"upstream": "languages: [es, no]"}),
    GridCase("grid-override-syntax", GRID_ERROR + ":10: downstream.overrides: 'optimization.clip_norm 10' is not a "
             "Hydra override", {"downstream": "languages: [es, ca]\noverrides: ['optimization.clip_norm 10']"}),
    GridCase("grid-pretrained-missing", GRID_ERROR + ":3: pretrained: <INPUTS>/none.pt: no such checkpoint file",
             {"pretrained": "none.pt"}),
    GridCase("grid-pretrained-fine-tuned", GRID_ERROR + ":3: pretrained: <FINETUNED> is a fine-tuned wav2vec2 CTC "
             "checkpoint, not a wav2vec2 pretraining checkpoint; a fine-tuned model goes in upstream.checkpoints",
             {"pretrained": "data/checkpoint_best.pt"}),
    GridCase("grid-method-missing", GRID_ERROR + ": method: missing; name the experiment this grid is for (one of "
             "storey2025, fu2022, liu2023, yang2023)", {"method": None}),
    GridCase("grid-out-is-a-file", "fairseq-subnets grid: error: --out <OUT>: is a file; name a folder (it is "
             "created if needed)", existing_file="out"),
    GridCase("grid-out-under-a-file", "fairseq-subnets grid: error: <OUT>: cannot write (Not a directory: <FILE>)",
             out="notes/run", existing_file="notes"),
    GridCase("grid-updates-too-few-for-the-schedule", GRID_ERROR + ": cell upstream-es-seed1 trains with tiny.yaml for "
             "the grid's 3 updates: lr_scheduler.phase_ratio=[0.1, 0.6, 0.3] with optimization.max_update=3 gives the "
             "decay phase 0 updates (int(3 x 0.3)), which the tri-stage schedule cannot divide by: raise "
             "optimization.max_update to at least 4", {"upstream": "languages: [es, ca]\nupdates: 3"}),
    GridCase("grid-out-of-domain-alphabet", GRID_ERROR + ":6: out_of_domain: language 'ru': 2 of 2 test transcripts "
             "(<INPUTS>/corpus/ru/test.ltr line 1 first) hold no character of the training language's dictionary "
             "<INPUTS>/corpus/es/dict.ltr.txt (another alphabet?)",
             {"text": "method: liu2023\nname: test\ndata: <INPUTS>/corpus\npretrained: <PRETRAINED>\nlanguage: es\n"
                      "out_of_domain: [ru]\n"}),
]


@dataclass(frozen=True)
class RunCase:
    id: str
    message: str
    """The stable prefix of the last stderr line; it names the key or the file."""
    argv: Sequence[str]
    """fairseq-hydra-train overrides after the required ones, or (generate) the whole command."""
    generate: bool = False


def train(w2v_path="<PRETRAINED>", *overrides):
    return (f"model.w2v_path={w2v_path}", *overrides)


def decoding(path):
    """fairseq-generate of `path` on <DATA>'s test split."""
    return ("<DATA>", "--path", path, "--task", "subnets_audio_finetuning", "--user-dir", USER_DIR, "--labels", "ltr",
            "--gen-subset", "test", "--cpu")


RUN_CASES = [
    RunCase("train-mask-deeper-model", TRAIN_ERROR + "model.mask_path: <DEEP_MASK>: mask for "
            "encoder.layers.2.self_attn.q_proj.weight, which the model does not have",
            train("<PRETRAINED>", "+model.mask_path=<DEEP_MASK>")),
    RunCase("train-mask-missing", TRAIN_ERROR + "model.mask_path: <INPUTS>/none.mask: no such mask file",
            train("<PRETRAINED>", "+model.mask_path=<INPUTS>/none.mask")),
    RunCase("train-mask-layers-beyond-model", TRAIN_ERROR + "model.mask_layers: layer 2 is selected but the model has "
            "2 encoder layers", train("<PRETRAINED>", "+model.mask_path=<DEEP_MASK>", "+model.mask_layers=0-5")),
    RunCase("train-w2v-path-fine-tuned", TRAIN_ERROR + "model.w2v_path: <FINETUNED> is a fine-tuned wav2vec2 CTC "
            "checkpoint, not a wav2vec2 pretraining checkpoint; a fine-tuned model to start from goes in "
            "+model.init_from", train("<FINETUNED>")),
    RunCase("train-w2v-path-text", TRAIN_ERROR + "model.w2v_path: <INPUTS>/notes.txt: not a torch checkpoint",
            train("<INPUTS>/notes.txt")),
    RunCase("train-init-from-pretraining", TRAIN_ERROR + "model.init_from: <PRETRAINED> is a wav2vec2 pretraining "
            "checkpoint, not a fine-tuned wav2vec2 CTC checkpoint; a pretraining checkpoint goes in model.w2v_path",
            train("<PRETRAINED>", "+model.init_from=<PRETRAINED>")),
    RunCase("train-init-from-language-single-checkpoint", TRAIN_ERROR + "model.init_from_language=es: <FINETUNED> is "
            "a single-language model; the key picks one language of a multilingual checkpoint",
            train("<PRETRAINED>", "+model.init_from=<FINETUNED>", "+model.init_from_language=es")),
    RunCase("train-normalize-differs", TRAIN_ERROR + "model.w2v_path: <PRETRAINED> was pretrained with "
            "normalize=False; fine-tune with task.normalize=false too", train("<PRETRAINED>", "task.normalize=true")),
    RunCase("train-language-masks-malformed", TRAIN_ERROR + "model.language_mask_files entry 'es': expected "
            "LANGUAGE:PATH", train("<PRETRAINED>", "+model.language_mask_files=[es]")),
    RunCase("train-language-masks-one-language-task", TRAIN_ERROR + "model.language_mask_files needs "
            "task._name=subnets_multilingual_finetuning", train("<PRETRAINED>", "+model.language_mask_files=[es:<DEEP_MASK>]")),
    RunCase("train-score-sparsity-out-of-range", TRAIN_ERROR + "model.score_sparsity=1.5: the fraction of weights "
            "removed must lie strictly between 0 and 1", train("<PRETRAINED>", "+model.score_sparsity=1.5")),
    RunCase("train-score-init-unknown", TRAIN_ERROR + "model.score_init=magnitude: choose one of ori, wmi, ri",
            train("<PRETRAINED>", "+model.score_sparsity=0.1", "+model.score_init=magnitude")),
    RunCase("train-score-targets-unknown", TRAIN_ERROR + "model.score_targets: unknown module kind 'ffm'",
            train("<PRETRAINED>", "+model.score_sparsity=0.1", "+model.score_targets=ffm")),
    RunCase("train-score-layers-beyond-model", TRAIN_ERROR + "model.score_layers: layer 2 is selected but the model "
            "has 2 encoder layers", train("<PRETRAINED>", "+model.score_sparsity=0.1", "+model.score_layers=0-5")),
    RunCase("train-score-freeze-with-trainable-biases", TRAIN_ERROR + "model.freeze_finetune_updates=100 with learned "
            "masks and trainable biases or layer norms: fairseq's freeze runs the encoder without gradients, which "
            "would also stop the scores", train("<PRETRAINED>", "+model.score_sparsity=0.1",
                                                "+model.score_train_biases=true", "model.freeze_finetune_updates=100")),
    RunCase("train-tuner-unknown", TRAIN_ERROR + "model.tuner: unknown method 'prefix_tuning'",
            train("<PRETRAINED>", "+model.tuner=prefix_tuning")),
    RunCase("train-tuner-rank-below-one", TRAIN_ERROR + "model.tuner_r: a rank is an integer >= 1 (got 0)",
            train("<PRETRAINED>", "+model.tuner=lora", "+model.tuner_r=0")),
    RunCase("train-tuner-option-of-another-method", TRAIN_ERROR + "model.tuner_init_r is an option of adalora; "
            "model.tuner=lora does not take it", train("<PRETRAINED>", "+model.tuner=lora", "+model.tuner_init_r=4")),
    RunCase("train-tuner-vera-d-initial-zero", TRAIN_ERROR + "model.tuner_d_initial: a finite number other than 0 "
            "(got 0.0); with d and b both starting at 0 neither would get a gradient",
            train("<PRETRAINED>", "+model.tuner=vera", "+model.tuner_d_initial=0")),
    RunCase("train-tuner-layers-beyond-model", TRAIN_ERROR + "model.tuner_layers: layer 2 is selected but the model "
            "has 2 encoder layers", train("<PRETRAINED>", "+model.tuner=s2lora", "+model.tuner_layers=0-5")),
    RunCase("train-tuner-rank-above-matrix", TRAIN_ERROR + "model.tuner_r: 1000 is above the rank 64 of "
            "encoder.layers.0.self_attn.q_proj.weight (64x64)",
            train("<PRETRAINED>", "+model.tuner=lora", "+model.tuner_r=1000")),
    RunCase("train-tuner-init-rank-above-matrix", TRAIN_ERROR + "model.tuner_init_r: 100 is above the rank 64 of "
            "encoder.layers.0.self_attn.q_proj.weight (64x64)",
            train("<PRETRAINED>", "+model.tuner=adalora", "+model.tuner_total_updates=8", "+model.tuner_init_r=100",
                  "optimization.max_update=8")),
    RunCase("train-tuner-schedule-after-run", TRAIN_ERROR + "model.tuner_total_updates: 1000 is above "
            "optimization.max_update=8: the rank budget would never shrink to target_r in this run",
            train("<PRETRAINED>", "+model.tuner=adalora", "+model.tuner_total_updates=1000",
                  "optimization.max_update=8")),
    RunCase("train-pruning-fraction-out-of-range", TRAIN_ERROR + "model.pruning_fraction=1.5: the share of the "
            "remaining weights pruned at each event lies strictly between 0 and 1",
            train("<PRETRAINED>", "+model.pruning_interval=4", "+model.pruning_target_sparsity=0.5",
                  "+model.pruning_fraction=1.5")),
    RunCase("train-pruning-target-after-max-update", TRAIN_ERROR + "optimization.max_update=600 ends before the target "
            "sparsity: pruning block-l2 every 200 updates, 0.2 of the remaining weights, to sparsity 0.9 in 11 events "
            "(last at update 2200)", train("<PRETRAINED>", "+model.pruning_interval=200",
                                           "+model.pruning_target_sparsity=0.9", "+model.pruning_criterion=block")),
    RunCase("train-rewinding-with-fp16-copies", TRAIN_ERROR + "common.fp16=true keeps fp32 copies of the weights in "
            "fairseq's optimizer, which would undo what pathway updates hold still and what rewinding restores: set "
            "common.memory_efficient_fp16=true", train("<PRETRAINED>", "+model.pruning_interval=4",
                                                       "+model.pruning_target_sparsity=0.5",
                                                       "+model.pruning_rewind_update=0", "common.fp16=true")),
    RunCase("train-lr-decay-phase-empty", TRAIN_ERROR + "lr_scheduler.phase_ratio=[0.1, 0.6, 0.3] with "
            "optimization.max_update=3 gives the decay phase 0 updates (int(3 x 0.3)), which the tri-stage schedule "
            "cannot divide by: raise optimization.max_update to at least 4", train("<PRETRAINED>", "optimization.max_update=3")),
    RunCase("train-lr-decay-steps-zero", TRAIN_ERROR + "lr_scheduler.decay_steps=0: the tri-stage schedule needs a decay "
            "phase of at least 1 update", train("<PRETRAINED>", "lr_scheduler.phase_ratio=null", "+lr_scheduler.warmup_steps=5")),
    RunCase("train-sparse-decoding", TRAIN_ERROR + "model.sparse_decoding=on is a decoding setting, which a training "
            "run refuses", train("<PRETRAINED>", "+model.sparse_decoding=on")),
    RunCase("train-init-from-damaged-bundle", TRAIN_ERROR + "model.init_from: <INPUTS>/bundle-damaged.pt: damaged "
            "bundle (checksum mismatch: its tensors, config or record changed since it was written)",
            train("<PRETRAINED>", "+model.init_from=<INPUTS>/bundle-damaged.pt", "+model.init_from_language=es")),
    RunCase("train-init-from-adapter", TRAIN_ERROR + "model.init_from: <INPUTS>/lora.adapter is an adapter file, not "
            "a checkpoint: rebuild the run's checkpoint from it and its backbone with fairseq-subnets adapters apply",
            train("<PRETRAINED>", "+model.init_from=<INPUTS>/lora.adapter")),
    RunCase("generate-damaged-bundle", "fairseq-generate: error: <INPUTS>/bundle-damaged.pt: damaged bundle (checksum "
            "mismatch: its tensors, config or record changed since it was written)",
            decoding("<INPUTS>/bundle-damaged.pt"), generate=True),
    RunCase("generate-adapter-file", "fairseq-generate: error: <INPUTS>/lora.adapter is an adapter file, not a "
            "checkpoint: rebuild the run's checkpoint from it and its backbone with fairseq-subnets adapters apply",
            decoding("<INPUTS>/lora.adapter"), generate=True),
    RunCase("generate-pretraining-checkpoint", "fairseq-generate: error: <PRETRAINED> is a wav2vec2 pretraining "
            "checkpoint (model wav2vec2), not a fine-tuned wav2vec2 CTC checkpoint",
            decoding("<PRETRAINED>"), generate=True),
]
DEFAULT_OUT_CASE = "grid-default-out-is-a-file"
SHARED_CASES = ("grid-shared-nothing-to-share", "grid-shared-is-a-file")
CATALOGUE_IDS = tuple(case.id for case in GRID_CASES + RUN_CASES) + (DEFAULT_OUT_CASE,) + SHARED_CASES
TRAINING_CASES = [case for case in RUN_CASES if not case.generate]
STARTED_CASES = ("train-mask-missing", "train-tuner-unknown", "generate-pretraining-checkpoint",
                 "generate-damaged-bundle", "generate-adapter-file")
"""The cases also run as real commands: one per error path of the training cases (see
test_every_error_path_of_the_training_cases_is_proven_by_a_real_start_up), and the decoding cases."""
CONFIG_NAME = "tiny"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """<INPUTS>: manifest folders and a grid's pretrained.pt (TINY, 2 encoder layers); data/ with a
    dictionary and a fine-tuned TINY checkpoint; a mask file for a 3-layer encoder; a text file."""
    from factory import TINY, random_encoder_masks, write_plugin_checkpoint
    from fairseq_subnets.core.maskfile import save_mask_file

    folder = tmp_path_factory.mktemp("inputs")
    write_grid_inputs(folder, write_pretrained(folder / "pretrained-source.pt"))
    (folder / "data").mkdir()
    write_plugin_checkpoint(folder / "data")
    save_mask_file(str(folder / "deep.mask"), random_encoder_masks(0.5, **{**TINY, "layers": 3}))
    for name in MANIFEST_FILES:  # Russian beside the corpus's es and ca: another alphabet
        (folder / "corpus" / "ru" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "corpus" / "ru" / name).write_text("б в |\nв |\n" if name == "test.ltr" else "")
    (folder / "notes.txt").write_text("epoch 3: loss 0.41\n")
    write_damaged_bundle_and_adapter(folder)
    return folder


def write_damaged_bundle_and_adapter(folder: Path) -> None:
    """<INPUTS>/bundle-damaged.pt, a bundle one of whose tensors changed after it was written, and
    <INPUTS>/lora.adapter, a LoRA run's adapter file."""
    from factory import write_run_checkpoint
    from test_bundle_files import changed_bundle, nudge_head_bias, write_language_runs

    runs = folder / "bundle-sources"
    runs.mkdir()
    assert main(["bundles", "build", *write_language_runs(runs), "--out", str(runs / "bundle.pt")]) == 0

    changed_bundle(runs / "bundle.pt", folder / "bundle-damaged.pt", change=nudge_head_bias)
    write_run_checkpoint(runs / "tuned.pt", tuner="lora")
    assert main(["adapters", "save", str(runs / "tuned.pt"), "--out", str(folder / "lora.adapter")]) == 0


def placeholders(inputs: Path) -> Dict[str, str]:
    return {"<PRETRAINED>": str(inputs / "pretrained.pt"), "<FINETUNED>": str(inputs / "data" / "checkpoint_best.pt"),
            "<DEEP_MASK>": str(inputs / "deep.mask"), "<DATA>": str(inputs / "data"), "<INPUTS>": str(inputs)}


def substituted(text, paths):
    for placeholder, path in paths.items():
        text = text.replace(placeholder, path)
    return text


def last_line(stderr):
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]


@pytest.mark.parametrize("case", GRID_CASES, ids=[case.id for case in GRID_CASES])
def test_bad_grid_file_stops_the_grid_before_anything_runs(case, inputs, tmp_path, capsys):
    options = dict(case.grid)
    if "text" in options:
        grid = tmp_path / "grid.yaml"
        if options["text"] is not None:
            grid.write_text(substituted(options["text"], placeholders(inputs)))
    else:
        grid = write_grid(tmp_path, inputs / "corpus", **options)
    paths = {"<GRID>": str(grid), "<OUT>": str(tmp_path / case.out), "<FILE>": str(tmp_path / case.existing_file),
             **placeholders(inputs)}
    if case.existing_file:
        (tmp_path / case.existing_file).write_text("not a folder\n")
    before = sorted(tmp_path.rglob("*"))
    assert main(["grid", str(grid), "--out", str(tmp_path / case.out)]) == EXIT_STATUS
    line = last_line(capsys.readouterr().err)
    assert line.startswith(substituted(case.message, paths)), line
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("case_id", SHARED_CASES)
def test_a_shared_folder_that_cannot_take_effect_stops_the_grid(case_id, inputs, tmp_path, capsys):
    """--shared names where grids keep the corpus they synthesize and the model they pretrain: a
    grid that names both has nothing to put there, and a file cannot hold them."""
    shared = tmp_path / "shared"
    if case_id == "grid-shared-nothing-to-share":
        grid = write_grid(tmp_path, inputs / "corpus")
        message = (f"--shared {shared}: grid {grid} names its data and its pretrained checkpoint, so it synthesizes "
                   "and pretrains nothing to share; leave --shared out")
    else:
        corpus = write_grid_inputs(tmp_path, inputs / "pretrained.pt")
        (corpus / "pretrain").mkdir()
        (corpus / "pretrain" / "train.tsv").write_text("")
        grid = write_grid(tmp_path, corpus, pretrained=None)
        shared.write_text("not a folder\n")
        message = f"--shared {shared}: is a file; name a folder (it is created if needed)"
    before = sorted(tmp_path.rglob("*"))
    for dry_run in ([], ["--dry-run"]):
        assert main(["grid", str(grid), "--out", str(tmp_path / "out"), "--shared", str(shared), *dry_run]) == EXIT_STATUS
        assert last_line(capsys.readouterr().err) == f"fairseq-subnets grid: error: {message}"
        assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("case_id", [DEFAULT_OUT_CASE])
def test_a_file_where_the_default_output_folder_goes_stops_the_grid(case_id, inputs, tmp_path, capsys, monkeypatch):
    """Without --out, the output folder is runs/<name> under the working folder."""
    grid = write_grid(tmp_path, inputs / "corpus")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "test").write_text("not a folder\n")
    before = sorted(tmp_path.rglob("*"))
    assert main(["grid", str(grid)]) == EXIT_STATUS
    assert last_line(capsys.readouterr().err) == (
        f"fairseq-subnets grid: error: {tmp_path / 'runs' / 'test'}: is a file, where the grid's default output "
        "folder runs/test goes; name a folder with --out")
    assert sorted(tmp_path.rglob("*")) == before


STAGES = ("task", "model", "criterion")
"""What fairseq-hydra-train builds before training, in its order: fairseq_cli.train calls
tasks.setup_task, then task.build_model, then task.build_criterion."""


def built_as_fairseq_hydra_train_builds(overrides, config_name=CONFIG_NAME, built=None):
    """The config that `fairseq-hydra-train --config-dir config/finetune --config-name NAME
    overrides...` composes (hydra_init registers fairseq's schema under the config name, as the
    command does; compose's defaults are hydra.main's), converted as fairseq's hydra_main converts
    it, then the user dir imported and the defaults added as fairseq_cli.train does; then that
    command's builds in its order. Returns (the stage that raised, the error), or (None, None);
    `built`, a dict, receives the config ("cfg") and what each stage built."""
    from fairseq import tasks, utils
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    entries_before = set(store.repo)
    hydra_init(config_name)
    stored_by_hydra_init = set(store.repo) - entries_before
    try:
        with warnings.catch_warnings():  # Hydra's notes on hydra.main's defaults, which the command logs too
            warnings.simplefilter("ignore", UserWarning)
            with initialize_config_dir(config_dir=str(CONFIG_DIR / "finetune")):
                cfg = compose(config_name, overrides=list(overrides))
    finally:  # the schema stored under the config's name would validate every later `tiny` this process composes
        for entry in stored_by_hydra_init:
            del store.repo[entry]
    add_defaults(cfg)
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    utils.import_user_module(cfg.common)
    add_defaults(cfg)
    built = {} if built is None else built
    built["cfg"] = cfg
    builds = {"task": lambda: tasks.setup_task(cfg.task), "model": lambda: built["task"].build_model(cfg.model),
              "criterion": lambda: built["task"].build_criterion(cfg.criterion)}
    for stage in STAGES:
        try:
            built[stage] = builds[stage]()
        except Exception as error:
            return stage, error
    return None, None


def training_arguments(case, paths, save_dir):
    """The fairseq-hydra-train overrides of a training case, its placeholders substituted."""
    return [f"common.user_dir={USER_DIR}", f"task.data={paths['<DATA>']}", f"checkpoint.save_dir={save_dir}",
            *(substituted(argument, paths) for argument in case.argv)]


@pytest.fixture(scope="module")
def built_in_process(inputs, tmp_path_factory):
    """Every training case built in this process as fairseq-hydra-train builds it: case id ->
    (stage, error), and the save dir, which nothing may create."""
    save_dir = tmp_path_factory.mktemp("in_process") / "run"
    paths = placeholders(inputs)
    return {case.id: built_as_fairseq_hydra_train_builds(training_arguments(case, paths, save_dir))
            for case in TRAINING_CASES}, save_dir


@pytest.mark.parametrize("case", TRAINING_CASES, ids=[case.id for case in TRAINING_CASES])
def test_bad_training_input_is_refused_while_fairseq_builds_the_run(case, inputs, built_in_process):
    """The documented message, as the error's headline (what the one-line wrapper prints last
    after `fairseq-hydra-train: error: `), raised before anything is written."""
    outcomes, save_dir = built_in_process
    stage, error = outcomes[case.id]
    assert stage is not None, "nothing refused the input"
    headline = str(error).splitlines()[0]
    assert headline.startswith(substituted(case.message[len(TRAIN_ERROR):], placeholders(inputs))), headline
    assert not save_dir.exists()


def error_path(outcome):
    """Where a case is refused (task, model or criterion: each a method of our task that the
    one-line wrapper wraps) and the error's family: its outermost class of this package, as the
    wrapper's list of input errors names families."""
    stage, error = outcome
    family = next(kind for kind in reversed(type(error).__mro__) if kind.__module__.startswith("fairseq_subnets"))
    return stage, family.__name__


def test_every_error_path_of_the_training_cases_is_proven_by_a_real_start_up(built_in_process):
    """Each path has a case in STARTED_CASES, whose real command must end with the one line."""
    outcomes, _ = built_in_process
    started = {error_path(outcomes[case_id]) for case_id in STARTED_CASES if case_id in outcomes}
    assert {case_id: error_path(outcome) for case_id, outcome in outcomes.items()
            if error_path(outcome) not in started} == {}


@pytest.fixture(scope="module")
def fairseq_runs(inputs, tmp_path_factory, fairseq_launcher):
    """Every STARTED_CASES command, each in its own folder, stderr to a file beside it, forked from
    the session's fork server (tests/forked_commands.py): case id -> (exit status, stderr, the
    folder)."""
    paths = placeholders(inputs)
    commands, folders = {}, {}
    for case in RUN_CASES:
        if case.id not in STARTED_CASES:
            continue
        folder = folders[case.id] = tmp_path_factory.mktemp(case.id)
        stderr = folder.parent / f"{folder.name}.stderr"
        if case.generate:
            commands[case.id] = (fairseq_command("fairseq-generate"),
                                 [substituted(argument, paths) for argument in case.argv], folder, stderr)
        else:
            commands[case.id] = (fairseq_command("fairseq-hydra-train"), [
                "--config-dir", str(CONFIG_DIR / "finetune"), "--config-name", CONFIG_NAME,
                *training_arguments(case, paths, folder / "run")], folder, stderr)
    statuses = fairseq_launcher.run_all(commands, {**os.environ, "OMP_NUM_THREADS": "1"})
    return {case_id: (statuses[case_id], commands[case_id][3].read_text(), folders[case_id]) for case_id in commands}


@pytest.mark.slow
@pytest.mark.parametrize("case_id", STARTED_CASES)
def test_bad_training_or_decoding_input_stops_the_real_command_with_one_line(case_id, inputs, fairseq_runs):
    """Exit status 2, the documented message as the last line of stderr, no traceback, no
    checkpoint, nothing written outside the save dir."""
    case = next(case for case in RUN_CASES if case.id == case_id)
    status, stderr, folder = fairseq_runs[case.id]
    assert status == EXIT_STATUS, stderr[-3000:]
    line = last_line(stderr)
    assert line.startswith(substituted(case.message, placeholders(inputs))), line
    assert not list(folder.rglob("*.pt")), "a checkpoint was written"
    assert "done training" not in stderr
    assert not [path for path in folder.iterdir() if path.name != "run"], "the command wrote outside its save_dir"
