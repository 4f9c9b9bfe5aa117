"""fairseq glue: registers the `subnets_*` task, model and criterion.

Importing this module imports fairseq. It is imported automatically when fairseq loads the package
as a user dir; import it explicitly when using the components from Python.
"""
from . import checkpoints  # noqa: F401  (allow-lists fairseq's checkpoint types for torch.load)
from . import criterions, models, tasks  # noqa: F401
