"""The "Benchmarks" catalogue of docs/bad-inputs.md, one test per row: `fairseq-subnets bench gpu`
or `bench deploy` run in-process on one bad setting must end with exit status 2 and one last
stderr line that starts with the documented message and names the culprit, before anything is
written (or, for `bench deploy`, any model built: the cases would take minutes otherwise). The
machine is made to have no CUDA device for every case, so the cases read the same on a GPU
machine."""
import pytest

from fairseq_subnets.cli.main import main
from test_bad_input_catalogue import catalogue_rows

CASES = {
    "bench-gpu-without-cuda": (["bench", "gpu", "--out", "<OUT>"],
                               "fairseq-subnets bench: error: no CUDA device", "--dry-run"),
    "bench-gpu-out-not-empty": (["bench", "gpu", "--dry-run", "--out", "<USED>"],
                                "fairseq-subnets bench: error: <USED> is not an empty folder", "<USED>"),
    "bench-gpu-unknown-mode": (["bench", "gpu", "--dry-run", "--out", "<OUT>", "--modes", "stock,lora2"],
                               "fairseq-subnets bench: error: --modes: unknown mode 'lora2'", "--modes"),
    "bench-gpu-budget-not-positive": (["bench", "gpu", "--dry-run", "--out", "<OUT>", "--budget-s", "0"],
                                      "fairseq-subnets bench: error: --budget-s must be positive, got 0", "--budget-s"),
    "bench-deploy-sparsity-outside": (["bench", "deploy", "--sparsities", "0.5,1.2"],
                                      "fairseq-subnets bench: error: --sparsities: 1.2 is not a sparsity in (0, 1)",
                                      "--sparsities"),
    "bench-deploy-sparsity-not-a-number": (["bench", "deploy", "--block-sparsities", "0.9,high"],
                                           "fairseq-subnets bench: error: --block-sparsities: 'high' is not a number",
                                           "--block-sparsities"),
    "bench-deploy-nothing-to-measure": (["bench", "deploy", "--sparsities", "", "--block-sparsities", ""],
                                        "fairseq-subnets bench: error: --sparsities and --block-sparsities are both "
                                        "empty", "--sparsities"),
    "bench-deploy-listed-twice": (["bench", "deploy", "--seconds", "4,15,4"],
                                  "fairseq-subnets bench: error: --seconds: 4 is listed twice", "--seconds"),
    "bench-deploy-threads-beyond-cpus": (["bench", "deploy", "--threads", "1,999"],
                                         "fairseq-subnets bench: error: --threads: 999 is not between 1 and this "
                                         "machine's", "--threads"),
    "bench-deploy-threads-not-whole": (["bench", "deploy", "--threads", "1.5"],
                                       "fairseq-subnets bench: error: --threads: '1.5' is not a whole number",
                                       "--threads"),
    "bench-deploy-seconds-too-short": (["bench", "deploy", "--seconds", "0.01"],
                                       "fairseq-subnets bench: error: --seconds: 0.01 s of audio is shorter than the "
                                       "feature extractor's receptive field", "--seconds"),
    "bench-deploy-repeats-not-positive": (["bench", "deploy", "--repeats", "0"],
                                          "fairseq-subnets bench: error: --repeats must be at least 1, got 0",
                                          "--repeats"),
}
CATALOGUE_IDS = tuple(CASES)


@pytest.mark.parametrize("case_id", CATALOGUE_IDS)
def test_bad_setting_gets_one_line_before_anything_is_written(case_id, tmp_path, capsys, monkeypatch):
    import torch

    from fairseq_subnets.benchmarks import deploy

    def no_model(*args, **kwargs):
        raise AssertionError("bench deploy built a model")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(deploy, "build_untrained_ctc_model", no_model)
    used = tmp_path / "used"
    used.mkdir()
    (used / "checkpoint_last.pt").write_text("")
    paths = {"<OUT>": str(tmp_path / "out"), "<USED>": str(used)}

    def substituted(text):
        for placeholder, path in paths.items():
            text = text.replace(placeholder, path)
        return text

    argv, message, culprit = CASES[case_id]
    assert main([substituted(argument) for argument in argv]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith(substituted(message)) and substituted(culprit) in stderr, stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["used"]
    assert [path.name for path in used.iterdir()] == ["checkpoint_last.pt"]


def test_the_catalogue_documents_exactly_these_messages():
    documented = {row.id: row for row in catalogue_rows()}
    for case_id, (_, message, _) in CASES.items():
        assert (documented[case_id].message, documented[case_id].exit_status) == (message, "2"), case_id
