"""The plugin registers its components under `subnets_*` names, keeps every stock config key, and
survives being imported twice (by the package import and by fairseq's --user-dir loader)."""
import dataclasses
import subprocess
import sys
import textwrap

import fairseq_subnets


def run_python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)


def test_user_dir_import_twice_registers_each_name_once():
    result = run_python(f"""
        from argparse import Namespace
        from fairseq import utils
        from fairseq.tasks import TASK_REGISTRY
        from fairseq.models import MODEL_REGISTRY
        from fairseq.criterions import CRITERION_REGISTRY
        import fairseq_subnets.plugin  # first import, as Python code using the components does
        for _ in range(2):
            utils.import_user_module(Namespace(user_dir={fairseq_subnets.USER_DIR!r}))
        print(TASK_REGISTRY["subnets_audio_finetuning"].__name__,
              MODEL_REGISTRY["subnets_wav2vec_ctc"].__name__,
              CRITERION_REGISTRY["subnets_ctc"].__name__)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SubnetsAudioFinetuningTask", "SubnetsWav2VecCtc", "SubnetsCtcCriterion"]


def test_user_dir_loader_alone_registers_components():
    """What fairseq-hydra-train and fairseq-generate do: import fairseq, then the user dir."""
    result = run_python(f"""
        from argparse import Namespace
        from fairseq import utils
        from fairseq.tasks import TASK_REGISTRY
        utils.import_user_module(Namespace(user_dir={fairseq_subnets.USER_DIR!r}))
        print("subnets_audio_finetuning" in TASK_REGISTRY)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_plugin_classes_extend_stock_ones_and_keep_every_stock_key():
    from fairseq.criterions.ctc import CtcCriterion, CtcCriterionConfig
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask

    from fairseq_subnets.plugin import criterions, models, tasks

    pairs = [
        (tasks.SubnetsAudioFinetuningTask, AudioFinetuningTask, tasks.SubnetsAudioFinetuningConfig, AudioFinetuningConfig),
        (models.SubnetsWav2VecCtc, Wav2VecCtc, models.SubnetsWav2Vec2CtcConfig, Wav2Vec2CtcConfig),
        (criterions.SubnetsCtcCriterion, CtcCriterion, criterions.SubnetsCtcCriterionConfig, CtcCriterionConfig),
    ]
    for ours, stock, our_config, stock_config in pairs:
        assert issubclass(ours, stock)
        stock_fields = {f.name: f.type for f in dataclasses.fields(stock_config)}
        our_fields = {f.name: f.type for f in dataclasses.fields(our_config)}
        assert stock_fields.items() <= our_fields.items()


def test_package_import_does_not_import_fairseq():
    result = run_python("""
        import sys
        import fairseq_subnets, fairseq_subnets.scoring, fairseq_subnets.runner
        print("fairseq" in sys.modules, "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_every_cli_subcommand_has_help():
    from fairseq_subnets.cli.main import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert {"data", "demo", "prune", "masks", "export"} <= set(subparsers.choices)
    for name in subparsers.choices:
        result = subprocess.run([sys.executable, "-m", "fairseq_subnets.cli.main", name, "--help"],
                                capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stderr)
        assert "usage: fairseq-subnets" in result.stdout
