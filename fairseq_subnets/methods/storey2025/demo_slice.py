"""The demo's slice of the language-subnetwork grid: the demo model's own subnetworks at three
sparsities, fine-tuned downstream on its language and on an unseen one (the upstream model is the
demo's fine-tuned checkpoint, not retrained)."""
from pathlib import Path

from ...demo import SkeletonResult, SkeletonSettings
from .run import GridRun
from .spec import DownstreamSpec, GridSpec, PruneSpec, UpstreamSpec, validate

SLICE_SPARSITIES = [0.0, 0.5, 0.9]
SLICE_UNSEEN_LANGUAGE = "ast"


def subnet_slice_spec(settings: SkeletonSettings, result: SkeletonResult) -> GridSpec:
    spec = GridSpec(
        path="make demo", name="demo-slice", data=result.corpus_dir, pretrained=result.pretrained_checkpoint,
        seeds=[settings.seed],
        upstream=UpstreamSpec(languages=[settings.language],
                              checkpoints={settings.language: result.finetuned_checkpoint}),
        prune=PruneSpec(sparsities=SLICE_SPARSITIES),
        downstream=DownstreamSpec(languages=[settings.language, SLICE_UNSEEN_LANGUAGE], epochs=1, freeze_epochs=1),
    )
    validate(spec)
    return spec


def run_subnet_slice(settings: SkeletonSettings, result: SkeletonResult, say=print):
    """Runs the slice into OUT/subnets; returns its finished result rows."""
    run = GridRun(subnet_slice_spec(settings, result), Path(settings.out_dir).resolve() / "subnets", say=say)
    run.run()
    return run.rows
