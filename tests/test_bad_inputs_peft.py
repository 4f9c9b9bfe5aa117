"""The "Adapters to PEFT" catalogue of docs/bad-inputs.md, one test per row.

Each case runs the real `fairseq-subnets adapters export --format peft` in-process on one bad
input (a method PEFT cannot hold exactly, a file that is no adapter file or a damaged one, an
output folder in use), with the checks of tests/test_bad_inputs_files.py: the documented exit status and last stderr
line naming the culprit, no traceback, nothing new on disk.
"""
import pytest

from fairseq_subnets.cli.main import main
from test_adapter_files import rewritten
from test_bad_inputs_files import Case, assert_documented, assert_refused_with_one_line

ERROR = "fairseq-subnets adapters: error: "
EXPORT = ("adapters", "export", "--format", "peft", "<ADAPTER>", "--out", "<OUT>")
MERGED_WAY_OUT = ("; export the merged model instead: fairseq-subnets adapters apply, then fairseq-subnets export CKPT "
                  "--format hf")
REFUSED_METHODS = {
    "s2lora": "S2-LoRA's factors are shared by a group of matrices and weighted per matrix by trained "
              "coefficients; no PEFT tuner has that form",
    "alpha_lora": "alpha-LoRA scales each low-rank delta by a trained coefficient; PEFT's LoRA scales by the fixed "
                  "lora_alpha / r",
    "bitfit": "BitFit trains bias offsets alone; PEFT has no tuner of that form",
}


LORA_B = "w2v_encoder.w2v_model.encoder.layers.1.self_attn.v_proj.parametrizations.weight.0.lora.tuner.lora_B"


def refused(method, why):
    return Case(f"adapters-export-peft-{method.replace('_', '-')}", EXPORT,
                f"{ERROR}<ADAPTER>: the {method} adapter has no exact PEFT form ({why}){MERGED_WAY_OUT}", "<ADAPTER>",
                {"<ADAPTER>": f"{method}.adapter"})


CASES = [
    *(refused(method, why) for method, why in REFUSED_METHODS.items()),
    Case("adapters-export-peft-out-not-empty", [*EXPORT[:-1], "<FULL>"],
         f"{ERROR}<FULL>: exists and is not an empty folder; name a new folder", "<FULL>",
         {"<ADAPTER>": "lora.adapter", "<FULL>": "full"}),
    Case("adapters-export-peft-checkpoint", EXPORT, f"{ERROR}<ADAPTER>: not an adapter file (not safetensors",
         "<ADAPTER>", {"<ADAPTER>": "lora.pt"}),
    Case("adapters-export-peft-truncated", EXPORT, f"{ERROR}<ADAPTER>: not an adapter file (not safetensors",
         "<ADAPTER>", {"<ADAPTER>": "truncated.adapter"}),
    Case("adapters-export-peft-v1-tensor-missing", EXPORT, f"{ERROR}<ADAPTER>: holds no {LORA_B}, which its model "
         "needs", "<ADAPTER>", {"<ADAPTER>": "v1-missing.adapter"}),
]
CATALOGUE_IDS = tuple(case.id for case in CASES)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """An adapter file of a LoRA run and of each refused method, the LoRA run's checkpoint, a
    truncated copy of its adapter file, a version 1 copy (no checksum) without one of its tensors,
    and a folder holding a file."""
    from factory import write_run_checkpoint

    folder = tmp_path_factory.mktemp("peft-inputs")
    for method in ("lora", *REFUSED_METHODS):
        write_run_checkpoint(folder / f"{method}.pt", tuner=method)
        assert main(["adapters", "save", str(folder / f"{method}.pt"), "--out", str(folder / f"{method}.adapter")]) == 0
    rewritten(folder / "lora.adapter", folder / "v1-missing.adapter", version="1", drop=LORA_B)
    whole = (folder / "lora.adapter").read_bytes()
    (folder / "truncated.adapter").write_bytes(whole[: len(whole) // 2])
    (folder / "full").mkdir()
    (folder / "full" / "keep.txt").write_text("mine\n")
    return folder


@pytest.mark.parametrize("case", CASES, ids=CATALOGUE_IDS)
def test_bad_peft_export_input_gets_one_line_naming_the_culprit(case, inputs, tmp_path, capsys):
    paths = {"<OUT>": str(tmp_path / "out"), **{name: str(inputs / file) for name, file in case.paths.items()}}
    assert_refused_with_one_line(case, paths, inputs, tmp_path, capsys)


def test_the_catalogue_documents_exactly_these_messages_and_exit_statuses():
    assert_documented(CASES)


def test_the_good_input_of_these_cases_is_exported(inputs, tmp_path):
    """The cases differ from a working command in their one bad input only."""
    assert main(["adapters", "export", "--format", "peft", str(inputs / "lora.adapter"), "--out",
                 str(tmp_path / "out")]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["adapter_config.json",
                                                                         "adapter_model.safetensors"]
