"""The "Files and command-line values" catalogue of docs/bad-inputs.md, one test per row.

Each case runs the real `fairseq-subnets` command in-process on one bad input and must end with
the documented exit status, a last stderr line that starts with the documented message and names
the culprit, no traceback, and nothing new on disk but what the catalogue lists. The pytest ids
are the catalogue ids; `<NAME>` in a command or message stands for a path the test substitutes.
"""
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Sequence, Tuple

import pytest

from fairseq_subnets.cli.main import main
from test_bad_input_catalogue import catalogue_rows
from test_adapter_files import edited_cfg, rewritten
from test_core_maskfile import tamper
from test_data_convert import write_audio, write_lines
from test_masks_cli import tiny_wav2vec2_state

EXECUTED_MARKER = "executed"
"""The folder a pickled payload would create in the inputs folder if any loader ran it."""
PRUNE = ("prune", "<CKPT>", "--method", "random", "--sparsity", "0.5", "--out", "<OUT>")
"""A correct prune command; cases swap one value for a bad one."""


@dataclass(frozen=True)
class Case:
    id: str
    argv: Sequence[str]
    message: str
    """The stable prefix of the last stderr line."""
    culprit: str
    """What the message must name: a `<NAME>` placeholder or a parameter."""
    paths: Dict[str, str] = field(default_factory=dict)
    """Placeholder -> file name in the shared inputs folder; `<OUT>` defaults to a new path in the
    case's own folder."""
    leaves: Tuple[str, ...] = ()
    """What the failed command leaves in the case's folder (relative paths)."""
    exit_status: int = 2


def prune_with(case_id, option, value, message, culprit):
    argv = list(PRUNE)
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    return Case(case_id, argv, message, culprit, {"<CKPT>": "model.pt"})


def stats_of(case_id, mask, message):
    return Case(case_id, ["masks", "stats", "<MASK>"], f"fairseq-subnets masks: error: <MASK>{message}", "<MASK>",
                {"<MASK>": mask})


def prune_of(case_id, checkpoint, message):
    return Case(case_id, PRUNE, f"fairseq-subnets prune: error: <CKPT>{message}", "<CKPT>", {"<CKPT>": checkpoint})


def apply_of(case_id, adapter, message):
    return Case(case_id, ["adapters", "apply", "<ADAPTER>", "--backbone", "<CKPT>", "--out", "<OUT>"],
                f"fairseq-subnets adapters: error: <ADAPTER>{message}", "<ADAPTER>",
                {"<ADAPTER>": adapter, "<CKPT>": "tuned.pt"})


def list_of(case_id, bundle, message):
    return Case(case_id, ["bundles", "list", "<BUNDLE>"], f"fairseq-subnets bundles: error: <BUNDLE>{message}",
                "<BUNDLE>", {"<BUNDLE>": bundle})


def build_of(case_id, run, held):
    """`bundles build es=<RUN>` of a learned-mask run that also holds another transform (`held`):
    a bundle shares one unchanged backbone, so it would silently drop that transform."""
    return Case(case_id, ["bundles", "build", "es=<RUN>", "--out", "<OUT>"],
                f"fairseq-subnets bundles: error: es=<RUN>: holds w2v_encoder.w2v_model.encoder.layers.0.{held}, a "
                "transform other than learned masks; a bundle shares one unchanged backbone between languages",
                "<RUN>", {"<RUN>": run})


PRUNE_ERROR = "fairseq-subnets prune: error: "
MASKS_ERROR = "fairseq-subnets masks: error: "
EXPORT_ERROR = "fairseq-subnets export: error: "
DATA_ERROR = "fairseq-subnets data: error: "
MANIFEST = ("data", "manifest")

CASES = [
    # ------------------------------------------------------------------------------- mask files
    stats_of("mask-missing", "missing.st", ": no such mask file"),
    stats_of("mask-empty", "empty.st", ": not a readable mask file, truncated or damaged"),
    stats_of("mask-truncated", "truncated.st", ": not a readable mask file, truncated or damaged"),
    stats_of("mask-random-bytes", "random.st", ": not a readable mask file, truncated or damaged"),
    stats_of("mask-pickle", "pickle.st", ": not a readable mask file, truncated or damaged"),
    stats_of("mask-is-checkpoint", "model.pt", ": not a readable mask file, truncated or damaged"),
    stats_of("mask-foreign-safetensors", "foreign.st", ": not a fairseq-subnets mask file (format None)"),
    stats_of("mask-flipped-bit", "flipped.st", ": damaged mask file (checksum mismatch)"),
    stats_of("mask-reshaped", "reshaped.st", ": damaged mask file (checksum mismatch)"),
    stats_of("mask-negative-shape", "negative.st", ": damaged mask file (encoder.layers.0.self_attn.q_proj.weight: "
             "shape [-32, -32] in 'shapes' is not a list of positive integers)"),
    stats_of("mask-zero-shape", "zero.st", ": damaged mask file (encoder.layers.0.self_attn.q_proj.weight: "
             "shape [0, 32] in 'shapes' is not a list of positive integers)"),
    stats_of("mask-non-integer-shape", "fraction.st", ": damaged mask file (encoder.layers.0.self_attn.q_proj.weight: "
             "shape [32.5, 32] in 'shapes' is not a list of positive integers)"),
    stats_of("mask-shape-count", "miscounted.st", ": damaged mask file (encoder.layers.0.self_attn.q_proj.weight "
             "holds 128 bytes for shape (32, 33))"),
    stats_of("mask-future-version", "future.st",
             ": mask file format version '4'; this fairseq-subnets reads versions 1, 2, 3"),
    # ------------------------------------------------------------------------------ checkpoints
    prune_of("ckpt-missing", "missing.pt", ": no such checkpoint file"),
    prune_of("ckpt-folder", "a-folder", ": cannot read (Is a directory)"),
    prune_of("ckpt-empty", "empty.pt", ": not a torch checkpoint"),
    prune_of("ckpt-text", "text.pt", ": not a torch checkpoint"),
    prune_of("ckpt-random-bytes", "random.pt", ": not a torch checkpoint"),
    prune_of("ckpt-truncated", "truncated.pt",
             ": damaged torch checkpoint (truncated, or a zip archive of another kind)"),
    prune_of("ckpt-foreign-class", "foreign-class.pt", ": holds datetime.date, refused by torch's weights-only loader "
             "(fairseq-subnets allows only fairseq.data.dictionary.Dictionary, argparse.Namespace)"),
    prune_of("ckpt-malicious", "malicious.pt", ": holds posix.mkdir, refused by torch's weights-only loader"),
    prune_of("ckpt-is-mask", "model.st", " is a mask file, not a checkpoint"),
    prune_of("ckpt-no-model", "no-model.pt", ": not a fairseq checkpoint (no 'model' state dict)"),
    # --------------------------------------------------------------------------- prune values
    prune_with("sparsity-above-one", "--sparsity", "1.5", PRUNE_ERROR + "sparsity must lie in [0, 1], got 1.5",
               "sparsity"),
    prune_with("sparsity-negative", "--sparsity", "-0.1", PRUNE_ERROR + "sparsity must lie in [0, 1], got -0.1",
               "sparsity"),
    prune_with("sparsity-nan", "--sparsity", "nan", PRUNE_ERROR + "sparsity must lie in [0, 1], got nan", "sparsity"),
    prune_with("sparsity-not-a-number", "--sparsity", "half",
               PRUNE_ERROR + "argument --sparsity: invalid float value: 'half'", "--sparsity"),
    prune_with("method-unknown", "--method", "magic", PRUNE_ERROR + "argument --method: invalid choice: 'magic'",
               "--method"),
    prune_with("block-malformed", "--block", "8y1",
               PRUNE_ERROR + "block: expected INPUTSxROWS such as '8x1' or '4x2', got '8y1'", "block"),
    prune_with("block-zero", "--block", "0x1",
               PRUNE_ERROR + "block: expected INPUTSxROWS such as '8x1' or '4x2', got '0x1'", "block"),
    Case("block-does-not-tile", [*PRUNE[:3], "block-l2", *PRUNE[4:], "--block", "5x1"],
         PRUNE_ERROR + "<CKPT>: encoder.layers.0.self_attn.q_proj.weight: block 5x1 does not tile a weight of "
         "shape (32, 32)", "block", {"<CKPT>": "model.pt"}),
    prune_with("layers-malformed", "--layers", "a",
               PRUNE_ERROR + "layers: cannot read 'a'; use 'all', '0-5', '0,3,5' or '0-3,8-11'", "layers"),
    prune_with("layers-backwards", "--layers", "3-1", PRUNE_ERROR + "layers: range '3-1' runs backwards", "layers"),
    prune_with("layers-beyond-model", "--layers", "0-9",
               PRUNE_ERROR + "<CKPT>: layers: layer 2 is selected but the model has 2 encoder layers", "layers"),
    prune_with("targets-unknown", "--targets", "mlp", PRUNE_ERROR + "targets: unknown module kind 'mlp'",
               "targets"),
    prune_with("targets-empty", "--targets", "", PRUNE_ERROR + "targets: unknown module kind ''", "targets"),
    # ------------------------------------------------------------------------- output locations
    Case("out-is-folder", PRUNE, PRUNE_ERROR + "<OUT>: cannot write (Is a directory)", "<OUT>",
         {"<CKPT>": "model.pt", "<OUT>": "a-folder"}),
    Case("out-under-a-file", PRUNE, PRUNE_ERROR + "<OUT>: cannot write (Not a directory: <NOTES>)", "<NOTES>",
         {"<CKPT>": "model.pt", "<OUT>": "notes.txt/sub/m.st", "<NOTES>": "notes.txt"}),
    Case("union-out-under-a-file", ["masks", "union", "<MASK>", "<MASK>", "--out", "<OUT>"],
         MASKS_ERROR + "<OUT>: cannot write (Not a directory: <NOTES>)", "<NOTES>",
         {"<MASK>": "model.st", "<OUT>": "notes.txt/u.st", "<NOTES>": "notes.txt"}),
    Case("export-out-is-folder", ["export", "<CKPT>", "--out", "<OUT>"],
         EXPORT_ERROR + "<OUT>: cannot write (Is a directory)", "<OUT>", {"<CKPT>": "model.pt", "<OUT>": "a-folder"}),
    # ----------------------------------------------------------------- masks of another layout
    Case("iou-other-shapes", ["masks", "iou", "<MASK_A>", "<MASK_B>"],
         MASKS_ERROR + "<MASK_B>: encoder.layers.0.self_attn.q_proj.weight has shape (16, 32) but (32, 32) in "
         "<MASK_A>", "<MASK_B>", {"<MASK_A>": "model.st", "<MASK_B>": "narrow.st"}),
    Case("iou-other-targets", ["masks", "iou", "<MASK_A>", "<MASK_B>"],
         MASKS_ERROR + "<MASK_B>: no mask for encoder.layers.0.self_attn.k_proj.weight, which <MASK_A> has",
         "<MASK_B>", {"<MASK_A>": "model.st", "<MASK_B>": "q.st"}),
    Case("iou-extra-weights", ["masks", "iou", "<MASK_A>", "<MASK_B>"],
         MASKS_ERROR + "<MASK_B>: mask for encoder.layers.0.self_attn.k_proj.weight, which <MASK_A> lacks",
         "<MASK_B>", {"<MASK_A>": "q.st", "<MASK_B>": "model.st"}),
    Case("union-other-layers", ["masks", "union", "<MASK_A>", "<MASK_B>", "--out", "<OUT>"],
         MASKS_ERROR + "<MASK_B>: no mask for encoder.layers.1.self_attn.q_proj.weight, which <MASK_A> has",
         "<MASK_B>", {"<MASK_A>": "model.st", "<MASK_B>": "layer0.st"}),
    Case("stats-by-unknown", ["masks", "stats", "<MASK>", "--by", "row"],
         "fairseq-subnets masks stats: error: argument --by: invalid choice: 'row'", "--by", {"<MASK>": "model.st"}),
    Case("labels-count", ["masks", "similarity", "<MASK_A>", "<MASK_B>", "--labels", "es,en,de"],
         MASKS_ERROR + "--labels names 3 masks but 2 mask files are given", "--labels",
         {"<MASK_A>": "model.st", "<MASK_B>": "seed1.st"}),
    Case("correlate-unknown-label",
         ["masks", "correlate", "<MASK_A>", "<MASK_B>", "--labels", "es,it", "--matrix", "<MATRIX>"],
         MASKS_ERROR + "<MATRIX>: no column labelled 'it'", "<MATRIX>",
         {"<MASK_A>": "model.st", "<MASK_B>": "seed1.st", "<MATRIX>": "matrix.csv"}),
    # ----------------------------------------------------------------------------------- export
    Case("export-ckpt-text", ["export", "<CKPT>", "--out", "<OUT>"], EXPORT_ERROR + "<CKPT>: not a torch checkpoint",
         "<CKPT>", {"<CKPT>": "text.pt"}),
    Case("export-ckpt-is-mask", ["export", "<CKPT>", "--out", "<OUT>"],
         EXPORT_ERROR + "<CKPT> is a mask file, not a checkpoint", "<CKPT>", {"<CKPT>": "model.st"}),
    Case("export-ckpt-no-model", ["export", "<CKPT>", "--out", "<OUT>"],
         EXPORT_ERROR + "<CKPT>: not a fairseq checkpoint (no 'model' state dict)", "<CKPT>",
         {"<CKPT>": "no-model.pt"}),
    Case("export-mask-missing", ["export", "<CKPT>", "--mask", "<MASK>", "--out", "<OUT>"],
         EXPORT_ERROR + "<MASK>: no such mask file", "<MASK>", {"<CKPT>": "model.pt", "<MASK>": "missing.st"}),
    Case("export-mask-other-shapes", ["export", "<CKPT>", "--mask", "<MASK>", "--out", "<OUT>"],
         EXPORT_ERROR + "<MASK>: does not fit <CKPT> (encoder.layers.0.self_attn.q_proj.weight: mask shape (16, 32) "
         "!= weight shape (32, 32))", "<MASK>", {"<CKPT>": "model.pt", "<MASK>": "narrow.st"}),
    Case("export-mask-other-weights", ["export", "<CKPT>", "--mask", "<MASK>", "--out", "<OUT>"],
         EXPORT_ERROR + "<MASK>: does not fit <CKPT> (encoder.layers.7.fc1.weight: no", "<MASK>",
         {"<CKPT>": "model.pt", "<MASK>": "layer7.st"}),
    Case("export-language-of-single-language", ["export", "<CKPT>", "--language", "en", "--out", "<OUT>"],
         EXPORT_ERROR + "<CKPT>: language 'en' is not one of the checkpoint's languages (none: it is a "
         "single-language model)", "<CKPT>", {"<CKPT>": "model.pt"}),
    # ------------------------------------------------------------------------------- data tools
    Case("data-fleurs-malformed-line", [*MANIFEST, "fleurs", "<SOURCE>", "--splits", "train", "--out", "<OUT>"],
         DATA_ERROR + "<TSV>:2: expected at least 7 tab-separated fields, got 3", "<TSV>",
         {"<SOURCE>": "fleurs-malformed", "<TSV>": "fleurs-malformed/train.tsv"}),
    Case("data-fleurs-missing-audio", [*MANIFEST, "fleurs", "<SOURCE>", "--splits", "train", "--out", "<OUT>"],
         DATA_ERROR + "<TSV>:2: audio file <SOURCE>/audio/train/1002.wav is missing", "<TSV>",
         {"<SOURCE>": "fleurs-missing-audio", "<TSV>": "fleurs-missing-audio/train.tsv"}, leaves=("out",)),
    Case("data-commonvoice-no-sentence-column",
         [*MANIFEST, "commonvoice", "<SOURCE>", "--splits", "train", "--out", "<OUT>"],
         DATA_ERROR + "<TSV>:1: header has no sentence column", "<TSV>",
         {"<SOURCE>": "commonvoice", "<TSV>": "commonvoice/train.tsv"}),
    Case("data-mls-bad-utterance-id", [*MANIFEST, "mls", "<SOURCE>", "--splits", "train", "--out", "<OUT>"],
         DATA_ERROR + "<TRANSCRIPTS>:1: utterance id '10-20-1' is not speaker_book_utterance", "<TRANSCRIPTS>",
         {"<SOURCE>": "mls", "<TRANSCRIPTS>": "mls/train/transcripts.txt"}),
    Case("data-folder-unknown-utterance",
         [*MANIFEST, "folder", "<SOURCE>", "--transcripts", "train=<TRANSCRIPTS>", "--out", "<OUT>"],
         DATA_ERROR + "<TRANSCRIPTS>:2: no audio file for 'zzz' under <SOURCE>", "<TRANSCRIPTS>",
         {"<SOURCE>": "folder/audio", "<TRANSCRIPTS>": "folder/train.txt"}),
    Case("data-transcript-file-missing",
         [*MANIFEST, "folder", "<SOURCE>", "--transcripts", "train=<TRANSCRIPTS>", "--out", "<OUT>"],
         DATA_ERROR + "transcript file not found: <TRANSCRIPTS>", "<TRANSCRIPTS>",
         {"<SOURCE>": "folder/audio", "<TRANSCRIPTS>": "folder/missing.txt"}),
    Case("data-transcripts-malformed", [*MANIFEST, "folder", "<SOURCE>", "--transcripts", "train", "--out", "<OUT>"],
         "fairseq-subnets data manifest: error: argument --transcripts: expected SPLIT=TRANSCRIPT_FILE, got 'train'",
         "--transcripts", {"<SOURCE>": "folder/audio"}),
    Case("data-source-missing", [*MANIFEST, "fleurs", "<SOURCE>", "--out", "<OUT>"],
         DATA_ERROR + "source folder not found: <SOURCE>", "<SOURCE>", {"<SOURCE>": "no-such-corpus"}),
    Case("data-out-is-a-file", [*MANIFEST, "mls", "<SOURCE>", "--splits", "train", "--out", "<OUT>"],
         DATA_ERROR + "<OUT>: cannot write (Not a directory)", "<OUT>", {"<SOURCE>": "mls-good", "<OUT>": "notes.txt"}),
    Case("data-out-under-a-file", [*MANIFEST, "mls", "<SOURCE>", "--splits", "train", "--out", "<OUT>"],
         DATA_ERROR + "<OUT>: cannot write (Not a directory: <NOTES>)", "<NOTES>",
         {"<SOURCE>": "mls-good", "<OUT>": "notes.txt/manifests", "<NOTES>": "notes.txt"}),
    Case("data-unknown-corpus", ["data", "synth", "--corpus", "no-such-corpus", "--out", "<OUT>"],
         DATA_ERROR + "no corpus named 'no-such-corpus'", "no-such-corpus"),
    Case("data-alphabet-file-missing",
         [*MANIFEST, "mls", "<SOURCE>", "--splits", "train", "--alphabet", "<DICT>", "--out", "<OUT>"],
         DATA_ERROR + "--alphabet <DICT>: no such dictionary file", "<DICT>",
         {"<SOURCE>": "mls-good", "<DICT>": "manifests/dict.ltr.txt"}),
    Case("data-jobs-zero", [*MANIFEST, "mls", "<SOURCE>", "--jobs", "0", "--out", "<OUT>"],
         "fairseq-subnets data manifest: error: argument --jobs: must be at least 1, got 0", "--jobs",
         {"<SOURCE>": "mls-good"}),
    Case("adapter-save-no-tuner", ["adapters", "save", "<CKPT>", "--out", "<OUT>"],
         "fairseq-subnets adapters: error: <CKPT>: holds no tuner (its model.tuner is unset)", "<CKPT>",
         {"<CKPT>": "model.pt"}),
    Case("adapter-apply-mask-file", ["adapters", "apply", "<ADAPTER>", "--backbone", "<CKPT>", "--out", "<OUT>"],
         "fairseq-subnets adapters: error: <ADAPTER>: not an adapter file (metadata format is", "<ADAPTER>",
         {"<ADAPTER>": "model.st", "<CKPT>": "model.pt"}),
    Case("adapter-apply-missing", ["adapters", "apply", "<ADAPTER>", "--backbone", "<CKPT>", "--out", "<OUT>"],
         "fairseq-subnets adapters: error: <ADAPTER>: no such adapter file", "<ADAPTER>",
         {"<ADAPTER>": "none.adapter", "<CKPT>": "model.pt"}),
    Case("adapter-info-text-file", ["adapters", "info", "<ADAPTER>"],
         "fairseq-subnets adapters: error: <ADAPTER>: not an adapter file (not safetensors", "<ADAPTER>",
         {"<ADAPTER>": "notes.txt"}),
    Case("report-method-unnamed", ["report", "<RESULTS>", "--out", "<OUT>"],
         "fairseq-subnets report: error: <RESULTS>: nothing names the method that wrote these results (no "
         "results.json or grid.yaml with method: beside them); name it with --method", "<RESULTS>",
         {"<RESULTS>": "results-unnamed/results.csv"}),
    Case("report-method-contradicts", ["report", "<RESULTS>", "--out", "<OUT>", "--method", "storey2025"],
         "fairseq-subnets report: error: --method storey2025: <GRID>:1 says the results are fu2022's", "--method",
         {"<RESULTS>": "results-fu2022", "<GRID>": "results-fu2022/grid.yaml"}),
    list_of("bundle-changed-tensor", "bundle-damaged.pt", ": damaged bundle (checksum mismatch: its tensors, config "
            "or record changed since it was written)"),
    list_of("bundle-future-version", "bundle-future.pt", ": bundle version 3; this fairseq-subnets reads versions 1, 2"),
    list_of("bundle-v1-output-rows", "bundle-v1-rows.pt", ": the record's dictionary of ca holds 32 symbols but its "
            "output layer language_heads.ca.weight has 31 rows"),
    list_of("bundle-v1-masks-missing", "bundle-v1-no-masks.pt", ": holds no bundle_masks.ca, the masks of language ca"),
    build_of("bundle-build-tuner-run", "learned-lora.pt", "fc1.parametrizations.weight.0.lora.tuner.lora_A"),
    build_of("bundle-build-fixed-mask-run", "learned-in-fixed-mask.pt",
             "self_attn.k_proj.parametrizations.weight.0.fixed_mask.default.mask"),
    apply_of("adapter-flipped-byte", "flipped.adapter",
             ": damaged adapter file (checksum mismatch: its tensors or metadata changed since it was written)"),
    apply_of("adapter-edited-option", "alpha80.adapter",
             ": damaged adapter file (checksum mismatch: its tensors or metadata changed since it was written)"),
    apply_of("adapter-future-version", "future.adapter",
             ": adapter file version '3'; this fairseq-subnets reads versions 1, 2"),
    apply_of("adapter-v1-method-edited", "v1-method.adapter",
             ": metadata 'method' says 's2lora' but the run config it applies ('cfg') trained 'lora' (an edited file)"),
    apply_of("adapter-v1-options-edited", "v1-options.adapter",
             ": metadata 'tuner' disagrees with the run config it applies ('cfg') at tuner_alpha (an edited file)"),
    apply_of("adapter-v1-short-dictionary", "v1-dictionary.adapter",
             ": metadata 'dictionary' gives 31 symbols (fairseq's 4 special ones included) but the output layer "
             "w2v_encoder.proj.weight has 32 rows"),
    apply_of("adapter-v1-tensor-missing", "v1-missing.adapter",
             ": holds no w2v_encoder.w2v_model.encoder.layers.1.self_attn.v_proj.parametrizations.weight.0.lora.tuner"
             ".lora_B, which its model needs"),
    apply_of("adapter-v1-tensor-reshaped", "v1-reshaped.adapter",
             ": w2v_encoder.w2v_model.encoder.layers.1.self_attn.v_proj.parametrizations.weight.0.lora.tuner.lora_B "
             "has shape (512,), its model needs (64, 8)"),
]
CATALOGUE_IDS = tuple(case.id for case in CASES)


class RunsCodeWhenUnpickled:
    """Unpickling this creates the folder `marker`: proof that a loader executed a pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def write_mask_inputs(folder: Path) -> None:
    """A checkpoint, masks that fit it or another layout, and every kind of damaged mask file."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    from fairseq_subnets.core.maskfile import load_mask_file, save_mask_file
    from fairseq_subnets.plugin.tools.prune import prune_checkpoint

    checkpoint = str(folder / "model.pt")
    torch.save({"model": tiny_wav2vec2_state(), "cfg": {"model": {"_name": "wav2vec2"}}}, checkpoint)
    for name, options in {"model.st": {}, "seed1.st": {"seed": 1}, "q.st": {"targets": "q"},
                          "layer0.st": {"layers": "0"}}.items():
        prune_checkpoint(checkpoint, str(folder / name), "random", 0.5, **options)
    masks = load_mask_file(str(folder / "model.st")).masks
    half_as_wide = {name: torch.ones(mask.shape[0] // 2, mask.shape[1], dtype=torch.bool) for name, mask in masks.items()}
    save_mask_file(str(folder / "narrow.st"), half_as_wide)
    save_mask_file(str(folder / "layer7.st"), {"encoder.layers.7.fc1.weight": torch.ones(64, 32, dtype=torch.bool)})

    data = (folder / "model.st").read_bytes()
    (folder / "empty.st").write_bytes(b"")
    (folder / "truncated.st").write_bytes(data[:100])
    (folder / "random.st").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "pickle.st").write_bytes(pickle.dumps(RunsCodeWhenUnpickled(folder / EXECUTED_MARKER)))
    save_file({"weight": np.ones(2, dtype=np.float32)}, str(folder / "foreign.st"))
    flipped = bytearray(data)
    flipped[-3] ^= 0x10
    (folder / "flipped.st").write_bytes(bytes(flipped))
    shapes = [[name, list(mask.shape)] for name, mask in masks.items()]
    for name, first_shape in {"reshaped.st": [64, 16], "negative.st": [-32, -32], "zero.st": [0, 32],
                              "fraction.st": [32.5, 32], "miscounted.st": [32, 33]}.items():
        (folder / name).write_bytes(data)
        tamper(folder / name, [[shapes[0][0], first_shape], *shapes[1:]])
    (folder / "future.st").write_bytes(data)
    tamper(folder / "future.st", format_version="4")


def write_checkpoint_inputs(folder: Path) -> None:
    """Files that are no usable checkpoint (model.pt, written before, is the good one)."""
    import datetime

    import torch

    (folder / "a-folder").mkdir()
    (folder / "empty.pt").write_bytes(b"")
    (folder / "text.pt").write_text("epoch 3: loss 0.41\n")
    (folder / "random.pt").write_bytes(bytes(range(256)) * 8)
    (folder / "truncated.pt").write_bytes((folder / "model.pt").read_bytes()[:300])
    torch.save({"model": {}, "saved": datetime.date(2024, 1, 1)}, folder / "foreign-class.pt")
    torch.save({"model": {}, "payload": RunsCodeWhenUnpickled(folder / EXECUTED_MARKER)}, folder / "malicious.pt")
    torch.save({"weights": torch.ones(2)}, folder / "no-model.pt")
    (folder / "notes.txt").write_text("not a folder\n")
    for results in ("results-unnamed", "results-fu2022"):
        (folder / results).mkdir()
        (folder / results / "results.csv").write_text("cell,cer\nen,10.0\n")
    (folder / "results-fu2022" / "grid.yaml").write_text("method: fu2022\n")
    (folder / "matrix.csv").write_text(",es,en\nes,1,.5\nen,.5,1\n")


def write_adapter_inputs(folder: Path) -> None:
    """A LoRA run's checkpoint (tuned.pt, also the backbone its adapter applies to), its adapter
    file, and adapter files damaged or edited in one place each; `v1-*` are written as 0.4.0 wrote
    them, without a checksum, so only the structural checks can catch their edits."""
    from factory import write_run_checkpoint

    write_run_checkpoint(folder / "tuned.pt", tuner="lora")
    good = folder / "good.adapter"
    assert main(["adapters", "save", str(folder / "tuned.pt"), "--out", str(good)]) == 0
    data = bytearray(good.read_bytes())
    data[-3] ^= 0x01
    (folder / "flipped.adapter").write_bytes(bytes(data))
    rewritten(good, folder / "alpha80.adapter",
              cfg=edited_cfg(good, lambda cfg: cfg["model"].update(tuner_alpha=80.0)))
    rewritten(good, folder / "future.adapter", version="3")
    rewritten(good, folder / "v1-method.adapter", version="1", method="s2lora")
    rewritten(good, folder / "v1-options.adapter", version="1",
              tuner=json.dumps({**json.loads(safe_metadata(good)["tuner"]), "tuner_alpha": 80.0}))
    rewritten(good, folder / "v1-dictionary.adapter", version="1",
              dictionary=json.dumps(json.loads(safe_metadata(good)["dictionary"])[:-1]))
    lora_b = "w2v_encoder.w2v_model.encoder.layers.1.self_attn.v_proj.parametrizations.weight.0.lora.tuner.lora_B"
    rewritten(good, folder / "v1-missing.adapter", version="1", drop=lora_b)
    rewritten(good, folder / "v1-reshaped.adapter", version="1", reshape=lora_b)


def write_bundle_inputs(folder: Path) -> None:
    """A bundle of two learned-mask runs, and copies damaged or edited in one place each; `v1-*`
    are written as 0.4.0 wrote them, without a checksum. Also learned-mask runs that hold a LoRA
    tuner or a fixed mask besides, which no bundle takes."""
    from factory import TINY, random_encoder_masks, write_run_checkpoint
    from fairseq_subnets.core.maskfile import save_mask_file
    from test_bundle_files import changed_bundle, drop_head_row, nudge_head_bias, write_language_runs

    good = folder / "bundle.pt"
    assert main(["bundles", "build", *write_language_runs(folder), "--out", str(good)]) == 0

    changed_bundle(good, folder / "bundle-damaged.pt", change=nudge_head_bias)
    changed_bundle(good, folder / "bundle-future.pt", version=3)
    changed_bundle(good, folder / "bundle-v1-rows.pt", version=1, change=drop_head_row)
    changed_bundle(good, folder / "bundle-v1-no-masks.pt", version=1,
                   change=lambda checkpoint: checkpoint["model"].pop("bundle_masks.ca"))
    write_run_checkpoint(folder / "learned-lora.pt", score_sparsity=0.5, tuner="lora", tuner_targets="fc1", tuner_r=2,
                         tuner_alpha=2.0)
    save_mask_file(str(folder / "fixed.mask"), random_encoder_masks(0.5, **TINY), {"method": "random"})
    write_run_checkpoint(folder / "learned-in-fixed-mask.pt", score_sparsity=0.5, mask_path=str(folder / "fixed.mask"))


def safe_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as reader:
        return reader.metadata()


def write_data_inputs(folder: Path) -> None:
    """Corpora in their distributed layouts, each broken in one place (mls-good is correct)."""
    fleurs_line = "{0}\t{0}.wav\tHola.\thola\th o l a |\t16000\tFEMALE"
    write_lines(folder / "fleurs-malformed" / "train.tsv", [fleurs_line.format(1001), "1002\t1002.wav\tHola."])
    write_lines(folder / "fleurs-missing-audio" / "train.tsv", [fleurs_line.format(1001), fleurs_line.format(1002)])
    for corpus in ("fleurs-malformed", "fleurs-missing-audio"):
        write_audio(folder / corpus / "audio" / "train" / "1001.wav", 16000)
    write_lines(folder / "commonvoice" / "train.tsv", ["client_id\tpath", "c1\ta.mp3"])
    write_lines(folder / "mls" / "train" / "transcripts.txt", ["10-20-1\ttext"])
    write_lines(folder / "mls-good" / "train" / "transcripts.txt", ["10_20_000001\tuna frase"])
    write_audio(folder / "mls-good" / "train" / "audio" / "10" / "20" / "10_20_000001.flac", 7000, audio_format="FLAC")
    write_audio(folder / "folder" / "audio" / "a.wav", 16000)
    write_lines(folder / "folder" / "train.txt", ["a\thola", "zzz\tnada"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    write_mask_inputs(folder)
    write_checkpoint_inputs(folder)
    write_data_inputs(folder)
    write_adapter_inputs(folder)
    write_bundle_inputs(folder)
    return folder


def snapshot(folder: Path):
    """Every path under `folder` with its size and modification time."""
    return {str(path.relative_to(folder)): (path.is_dir(), path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*")}


def run_cli(argv):
    """The exit status of `fairseq-subnets ARGV` run in this process."""
    try:
        return main(list(argv))
    except SystemExit as exit_info:  # argparse's own errors
        return exit_info.code


@pytest.mark.parametrize("case", CASES, ids=CATALOGUE_IDS)
def test_bad_input_gets_one_line_naming_the_culprit(case, inputs, tmp_path, capsys):
    paths = {"<OUT>": str(tmp_path / "out"), **{name: str(inputs / file) for name, file in case.paths.items()}}
    assert_refused_with_one_line(case, paths, inputs, tmp_path, capsys)


def assert_refused_with_one_line(case, paths, inputs, tmp_path, capsys):
    """Runs the case's command with `paths` (placeholder -> path) substituted and checks the
    promise of docs/bad-inputs.md: its exit status, a last line starting with its message and
    naming its culprit, no traceback, nothing changed in `inputs`, nothing new in `tmp_path` but
    what the case leaves."""
    def substituted(text):
        for placeholder, path in paths.items():
            text = text.replace(placeholder, path)
        return text

    before = snapshot(inputs), snapshot(tmp_path)
    status = run_cli([substituted(argument) for argument in case.argv])
    stderr = capsys.readouterr().err
    assert status == case.exit_status, stderr
    assert "Traceback" not in stderr
    last_line = stderr.rstrip("\n").splitlines()[-1]
    assert last_line.startswith(substituted(case.message)), last_line
    assert substituted(case.culprit) in last_line
    assert snapshot(inputs) == before[0]
    assert set(snapshot(tmp_path)) - set(before[1]) == set(case.leaves)


def test_the_catalogue_documents_exactly_these_messages_and_exit_statuses():
    assert_documented(CASES)


def assert_documented(cases):
    """Each case has its catalogue row, with the same message and exit status."""
    documented = {row.id: row for row in catalogue_rows()}
    for case in cases:
        assert documented[case.id].message == case.message, case.id
        assert documented[case.id].exit_status == str(case.exit_status), case.id
