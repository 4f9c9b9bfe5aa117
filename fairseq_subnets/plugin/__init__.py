"""fairseq glue: registers the `subnets_*` tasks, model, criterion and learning-rate schedule, and allow-lists fairseq's
checkpoint classes for torch's weights-only loader.

Importing this module imports fairseq. Importing `fairseq_subnets` imports it too, at once if
fairseq is already imported and otherwise right after fairseq's import (see
`fairseq_subnets.plugin_loading`), so it is rarely imported by name.
"""
from . import checkpoints  # noqa: F401  (allow-lists fairseq's checkpoint types for torch.load)
from . import criterions, lr_schedules, models, pretraining, tasks  # noqa: F401
from .resume import install_atomic_checkpoint_copies

install_atomic_checkpoint_copies()
