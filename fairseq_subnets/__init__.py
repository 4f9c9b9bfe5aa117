"""fairseq-subnets: subnetworks of wav2vec2 / XLS-R models, as a fairseq plugin.

The pure-torch core (`fairseq_subnets.core`) and the data tools (`fairseq_subnets.data`) never
import fairseq. The fairseq components live in `fairseq_subnets.plugin`; they are registered when
fairseq loads this package as a user dir (`--user-dir` / `common.user_dir`), because fairseq is
imported first in that case. Code that needs the components without a fairseq CLI imports
`fairseq_subnets.plugin` itself.
"""
import os
import sys

__version__ = "0.2.0"

USER_DIR = os.path.dirname(os.path.abspath(__file__))
"""The path to give fairseq as `--user-dir` / `common.user_dir`."""

if "fairseq" in sys.modules:
    from . import plugin  # noqa: F401  (registers tasks, models, criterions)
