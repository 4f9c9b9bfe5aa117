"""What tests read back from saved fairseq checkpoints, and running fairseq commands side by side."""
from concurrent.futures import ThreadPoolExecutor


SIDE_BY_SIDE_THREADS = 1
"""CPU threads of a fairseq command that these helpers run beside another on the test machine's two
cores: two commands each using both cores spend a third or more of their CPU time waiting on each
other's threads (seen with `bench gpu --dry-run`)."""


def two_at_a_time(*calls):
    """Runs each `(function, *arguments)`, two at a time, and returns the results in order (the
    first failure raised): a fairseq command is mostly a single-threaded start-up, and the test
    machine has two cores."""
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(function, *arguments) for function, *arguments in calls]
    return [future.result() for future in futures]


def new_run_config(run_checkpoint, save_dir):
    """The run config `run_checkpoint` recorded, as a new run in `save_dir` would start it: in a
    save_dir of its own, building its model does not resume (and check settings against) the old
    run."""
    from omegaconf import OmegaConf, open_dict

    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    cfg = OmegaConf.create(load_checkpoint(run_checkpoint)["cfg"])
    with open_dict(cfg):
        cfg.checkpoint.save_dir = str(save_dir)
    return cfg


def stored_masks_and_baked_weights(checkpoint):
    """The masks a checkpoint stores and its effective (baked) weights, by state-dict key."""
    from fairseq_subnets.core.parametrize import bake_state_dict, masks_from_state_dict
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    state = load_checkpoint(checkpoint)["model"]
    return masks_from_state_dict(state, prefix=W2V_PREFIX), bake_state_dict(state)


def assert_pruned_weights_zero(checkpoint, expected_masks):
    """The checkpoint holds exactly `expected_masks` and every pruned effective weight is 0."""
    import torch

    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    masks, baked = stored_masks_and_baked_weights(checkpoint)
    assert masks.keys() == expected_masks.keys(), checkpoint
    for name, mask in expected_masks.items():
        assert torch.equal(masks[name], mask), (checkpoint, name)
        assert torch.count_nonzero(baked[W2V_PREFIX + name][~mask]) == 0, (checkpoint, name)


def assert_export_matches_in_stock_fairseq(checkpoint, exported, data, work_dir):
    """`exported` (from `fairseq-subnets export checkpoint`) loads in another process that never
    imports the plugin (`python -c`, through the runner's launcher: the tests fork it from a
    server holding fairseq's modules, never ours), as stock `Wav2VecCtc` under `audio_finetuning`,
    and gives the logits the plugin's model of `checkpoint` gives on three test utterances.
    Equality is to float32 rounding: separate processes may sum GEMMs in another order
    (alignment)."""
    import sys
    import textwrap

    import torch
    from fairseq import checkpoint_utils

    import fairseq_subnets.plugin  # noqa: F401
    from fairseq_subnets.runner import run_logged, thread_env

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data)})
    model = models[0].eval()
    task.load_dataset("test")
    sample = task.dataset("test").collater([task.dataset("test")[i] for i in range(3)])
    torch.save(sample["net_input"], work_dir / "input.pt")
    with torch.no_grad():
        expected = model.get_logits(model(**sample["net_input"]))

    stock_run = textwrap.dedent(f"""
        import sys, torch
        from fairseq import checkpoint_utils
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [{str(exported)!r}], arg_overrides={{"data": {str(data)!r}}})
        assert not any(name.startswith("fairseq_subnets") for name in sys.modules)
        model = models[0].eval()
        with torch.no_grad():
            logits = model.get_logits(model(**torch.load({str(work_dir / 'input.pt')!r})))
        torch.save(logits, {str(work_dir / 'stock_logits.pt')!r})
        print("loaded as", type(model).__name__, cfg.task._name, flush=True)
    """)
    log = run_logged([sys.executable, "-c", stock_run], work_dir / "stock_load.log",
                     env=thread_env(SIDE_BY_SIDE_THREADS))
    assert log.splitlines()[-1].split() == ["loaded", "as", "Wav2VecCtc", "audio_finetuning"], log[-3000:]
    torch.testing.assert_close(torch.load(work_dir / "stock_logits.pt"), expected, rtol=1e-5, atol=1e-5)


def assert_generate_decodes_every_test_utterance(checkpoint, data, work_dir):
    """Stock fairseq-generate (with the plugin) decodes `checkpoint` on every utterance of the
    test split of `data`."""
    from fairseq_subnets.runner import generate

    decoded = generate(data, checkpoint, "test", work_dir / "decode", threads=SIDE_BY_SIDE_THREADS)
    assert decoded.hypotheses == len((data / "test.tsv").read_text().splitlines()) - 1


def assert_exports_to_stock_fairseq(checkpoint, data, work_dir):
    """`fairseq-subnets export` writes a checkpoint that stock fairseq loads without the plugin and
    that gives the plugin model's logits (`assert_export_matches_in_stock_fairseq`)."""
    from fairseq_subnets.cli.main import main as cli

    exported = work_dir / "plain.pt"
    assert cli(["export", str(checkpoint), "--out", str(exported)]) == 0
    assert_export_matches_in_stock_fairseq(checkpoint, exported, data, work_dir)


def assert_decodes_and_exports_to_stock_fairseq(checkpoint, data, work_dir):
    """Both checks above, side by side: fairseq-generate's start-up beside the export and its stock
    load."""
    two_at_a_time((assert_generate_decodes_every_test_utterance, checkpoint, data, work_dir),
                  (assert_exports_to_stock_fairseq, checkpoint, data, work_dir))


def write_test_split(folder):
    """A `test` split of three random-noise utterances (with words and letters) in `folder`, beside
    a checkpoint's dictionary, for decoding with stock fairseq-generate; returns the utterance count."""
    import numpy as np
    import soundfile

    from fairseq_subnets.data.text import letters

    audio = folder / "audio"
    audio.mkdir()
    transcripts = ("hola", "adios mundo", "buenos dias")
    lengths = (16000, 24000, 20000)
    generator = np.random.default_rng(0)
    for index, length in enumerate(lengths):
        soundfile.write(audio / f"u{index}.wav", (generator.standard_normal(length) * 3000).astype(np.int16), 16000,
                        subtype="PCM_16")
    (folder / "test.tsv").write_text(f"{audio}\n" + "".join(f"u{i}.wav\t{n}\n" for i, n in enumerate(lengths)))
    (folder / "test.wrd").write_text("".join(f"{words}\n" for words in transcripts))
    (folder / "test.ltr").write_text("".join(f"{letters(words)}\n" for words in transcripts))
    return len(lengths)
