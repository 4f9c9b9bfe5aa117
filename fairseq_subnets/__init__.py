"""fairseq-subnets: subnetworks of wav2vec2 / XLS-R models, as a fairseq plugin.

The pure-torch core (`fairseq_subnets.core`) and the data tools (`fairseq_subnets.data`) never
import fairseq, and neither does importing this package. The fairseq components live in
`fairseq_subnets.plugin`; they are registered whichever of fairseq and this package is imported
first (see `plugin_loading`), so `--user-dir` / `common.user_dir`, a plain `import fairseq` in a
notebook, and an explicit `import fairseq_subnets.plugin` all find them.
"""
import os

from .plugin_loading import register_now_or_after_fairseq

__version__ = "0.4.0"

USER_DIR = os.path.dirname(os.path.abspath(__file__))
"""The path to give fairseq as `--user-dir` / `common.user_dir`."""

register_now_or_after_fairseq()
