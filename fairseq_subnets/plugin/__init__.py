"""fairseq glue: registers the `subnets_*` tasks, model, criterion and learning-rate schedule, and allow-lists fairseq's
checkpoint classes for torch's weights-only loader.

Three sub-layers, lowest first; a module imports only from its own sub-layer or a lower one
(tests/test_layers.py reads the import statements):
  formats     the checkpoint and file formats: reading fairseq checkpoints weights-only, their
              kinds, upstream checkpoints for `init_from`, bundle, adapter and compact checkpoint
              files
  components  the registered fairseq components (model host, tasks, criterion, generator,
              learning-rate schedule, pretraining) and what they run on (multilingual batches,
              seeded time masking, one-line errors)
  tools       the offline work behind the CLI and the grids: prune, export, updates per epoch

Importing this module imports fairseq. Importing `fairseq_subnets` imports it too, at once if
fairseq is already imported and otherwise right after fairseq's import (see
`fairseq_subnets.plugin_loading`), so it is rarely imported by name. Importing any module below
it imports it first, and with it every technique and its transform kinds (through the model host).
"""
from .formats import checkpoints  # noqa: F401  (allow-lists fairseq's checkpoint types for torch.load)
from .components import criterions, lr_schedules, models, pretraining, tasks  # noqa: F401
from .components.resume import install_atomic_checkpoint_copies

install_atomic_checkpoint_copies()
