"""The plugin registers its components under `subnets_*` names, keeps every stock config key, and
registers them (and the checkpoint allow-list) exactly once whichever of fairseq and fairseq_subnets
is imported first, by the package import, fairseq's --user-dir loader, or both. Every import-order
test runs in a fresh interpreter that imports fairseq, and so is slow. Where a check needs an
interpreter that starts with one of those orders (a notebook importing the package first, the
plugin imported alone), it runs in that order's interpreter after its registration is read
(AFTER_THE_REPORT), instead of paying fairseq's import in one more."""
import dataclasses
import subprocess
import sys
import textwrap

import pytest

import fairseq_subnets
from checkpoint_helpers import two_at_a_time
from factory import write_plugin_checkpoint

SUBNETS_NAMES = {
    "TASK_REGISTRY": ["subnets_audio_finetuning", "subnets_multilingual_finetuning", "subnets_audio_pretraining"],
    "MODEL_REGISTRY": ["subnets_wav2vec_ctc"], "CRITERION_REGISTRY": ["subnets_ctc"],
    "LR_SCHEDULER_REGISTRY": ["subnets_tri_stage"],
}
REPORT_REGISTRATION = f"""
    import torch
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.data.dictionary import Dictionary
    from fairseq.models import MODEL_REGISTRY
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
    from fairseq.tasks import TASK_REGISTRY
    registered = {{"TASK_REGISTRY": TASK_REGISTRY, "MODEL_REGISTRY": MODEL_REGISTRY,
                   "CRITERION_REGISTRY": CRITERION_REGISTRY, "LR_SCHEDULER_REGISTRY": LR_SCHEDULER_REGISTRY}}
    for registry, names in registered.items():
        print(registry, *sorted(name for name in names if name.startswith("subnets_")))
    allowed = torch.serialization.get_safe_globals()
    print("allow-listed", Dictionary in allowed, Namespace in allowed)
"""
STOCK_ORDER = f"""
    from fairseq import utils
    for _ in range(2):
        utils.import_user_module(Namespace(user_dir={fairseq_subnets.USER_DIR!r}))
"""
"""What fairseq-hydra-train and fairseq-generate do (fairseq first, then the user dir), twice."""
IMPORT_ORDERS = {
    "package, then user dir loader (twice)": f"""
        import sys
        import fairseq_subnets
        assert "fairseq" not in sys.modules
        from fairseq import utils
        for _ in range(2):
            utils.import_user_module(Namespace(user_dir={fairseq_subnets.USER_DIR!r}))
    """,
    "package, then plain fairseq": """
        import fairseq_subnets
        import fairseq
    """,
    "package, then a fairseq submodule": """
        import fairseq_subnets
        from fairseq.tasks import TASK_REGISTRY
    """,
    "plugin by name, before fairseq": """
        import fairseq_subnets.plugin
    """,
    "fairseq, then package": """
        import fairseq
        import fairseq_subnets
    """,
}


NOTEBOOK_LOAD = """
    from fairseq import checkpoint_utils
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([CHECKPOINT])
    print(type(models[0]).__name__, type(task).__name__, models[0].mask_digest())
"""
"""A notebook loading a plugin checkpoint with stock fairseq (CHECKPOINT: its path)."""
TRANSFORM_KINDS_LEFT_TO_IMPORT = """
    import importlib, pkgutil
    import fairseq_subnets.techniques as techniques
    from fairseq_subnets.core.transforms import TRANSFORM_KINDS
    by_plugin = set(TRANSFORM_KINDS)
    for info in pkgutil.walk_packages(techniques.__path__, techniques.__name__ + "."):
        importlib.import_module(info.name)
    print(" ".join(sorted(by_plugin)), "|", " ".join(sorted(set(TRANSFORM_KINDS) - by_plugin)))
"""
"""The transform kinds registered by the plugin's import, and those that importing every module
of every technique folder adds. The report before it imports only fairseq modules, which the
plugin has imported already, so the kinds are still the plugin's own."""
AFTER_THE_REPORT = {"package, then a fairseq submodule": NOTEBOOK_LOAD,
                    "plugin by name, before fairseq": TRANSFORM_KINDS_LEFT_TO_IMPORT}
"""import order -> a check that needs an interpreter started with that order, run in its
interpreter once the registration is printed (so nothing it imports can change what is reported)."""
REPORTED = "-- registration reported --"


def run_python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)


def registration_after(imports, afterwards=""):
    """What is registered and allow-listed after running `imports` in a fresh interpreter, and what
    `afterwards`, run in it next, prints."""
    result = run_python("from argparse import Namespace\n" + textwrap.dedent(imports) + textwrap.dedent(REPORT_REGISTRATION)
                        + f"print({REPORTED!r})\n" + textwrap.dedent(afterwards))
    assert result.returncode == 0, result.stderr[-2000:]
    registration, _, printed_afterwards = result.stdout.partition(REPORTED + "\n")
    return registration.splitlines(), printed_afterwards


@pytest.fixture(scope="module")
def plugin_checkpoint(tmp_path_factory):
    """A masked plugin checkpoint and its model's mask digest."""
    path, model, _ = write_plugin_checkpoint(tmp_path_factory.mktemp("notebook"), sparsity=0.5, seed=3)
    return path, model.mask_digest()


@pytest.fixture(scope="module")
def order_interpreters(plugin_checkpoint):
    """Every import order's interpreter and the stock commands' (under "stock"): (registration, what
    its AFTER_THE_REPORT check printed), two interpreters at a time: each is a single-threaded
    import of torch and fairseq, and the machine has two cores."""
    orders = {"stock": STOCK_ORDER, **IMPORT_ORDERS}
    afterwards = {order: AFTER_THE_REPORT.get(order, "").replace("CHECKPOINT", repr(str(plugin_checkpoint[0])))
                  for order in orders}
    return dict(zip(orders, two_at_a_time(*((registration_after, imports, afterwards[order])
                                            for order, imports in orders.items()))))


@pytest.fixture(scope="module")
def registrations(order_interpreters):
    return {order: registration for order, (registration, _) in order_interpreters.items()}


@pytest.fixture(scope="module")
def stock_registration(registrations):
    """What the stock commands register; every other import order must register the same."""
    registration = registrations["stock"]
    registered = {line.split()[0]: set(line.split()[1:]) for line in registration[:-1]}
    assert all(set(names) <= registered[registry] for registry, names in SUBNETS_NAMES.items()), registration
    assert registration[-1] == "allow-listed True True"
    return registration


@pytest.mark.slow
@pytest.mark.parametrize("order", IMPORT_ORDERS)
def test_every_import_order_registers_each_component_and_the_allow_list_once(order, registrations, stock_registration):
    """fairseq raises on a second registration of a name, so a clean exit also means "once"."""
    assert registrations[order] == stock_registration


@pytest.mark.slow
def test_a_notebook_importing_the_package_first_loads_a_plugin_checkpoint_with_stock_fairseq(order_interpreters,
                                                                                             plugin_checkpoint):
    """Stock `load_model_ensemble_and_task` needs the task and model registered and the checkpoint's
    Dictionary allow-listed for torch's weights-only loader, all after our package came first
    (the interpreter of "package, then a fairseq submodule")."""
    _, mask_digest = plugin_checkpoint
    _, printed = order_interpreters["package, then a fairseq submodule"]
    assert printed.split() == ["SubnetsWav2VecCtc", "SubnetsAudioFinetuningTask", mask_digest]
    assert mask_digest != ""


@pytest.mark.slow
def test_a_notebook_loads_a_checkpoint_trained_by_fairseq_hydra_train(skeleton_run):
    _, pipeline = skeleton_run
    result = run_python(f"""
        import fairseq_subnets
        from fairseq import checkpoint_utils
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([{pipeline.finetuned_checkpoint!r}])
        print(type(models[0]).__name__, cfg.model._name)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SubnetsWav2VecCtc", "subnets_wav2vec_ctc"]


def test_plugin_classes_extend_stock_ones_and_keep_every_stock_key():
    from fairseq.criterions.ctc import CtcCriterion, CtcCriterionConfig
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask

    from fairseq_subnets.plugin.components import criterions, models, tasks

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


@pytest.mark.slow
def test_importing_the_plugin_registers_the_transform_kinds_of_every_technique_folder(order_interpreters):
    """Every tool that rebuilds or bakes a state dict (export, prune, bundles, adapters, init_from)
    imports the plugin, so the plugin alone must register every kind any technique module
    defines; pkgutil then imports all of them and must find none left (the interpreter of
    "plugin by name, before fairseq")."""
    _, printed = order_interpreters["plugin by name, before fairseq"]
    by_plugin, late = printed.split("|")
    assert {"fixed_mask", "dense_mask", "score_mask", "language_masks"} <= set(by_plugin.split())
    assert late.split() == []


def test_package_import_does_not_import_fairseq():
    result = run_python("""
        import sys
        import fairseq_subnets, fairseq_subnets.scoring, fairseq_subnets.runner, fairseq_subnets.data
        import fairseq_subnets.benchmarks.data_check
        print("fairseq" in sys.modules, "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_every_cli_subcommand_has_help(capsys):
    """In this process: a subprocess per subcommand would pay torch's import a dozen times."""
    from fairseq_subnets.cli.main import build_parser, main

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert {"data", "demo", "prune", "masks", "export"} <= set(subparsers.choices)
    for name in subparsers.choices:
        with pytest.raises(SystemExit) as exit_status:
            main([name, "--help"])
        assert exit_status.value.code == 0, name
        assert f"usage: fairseq-subnets {name}" in capsys.readouterr().out, name
