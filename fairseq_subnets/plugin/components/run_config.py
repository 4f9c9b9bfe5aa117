"""Settings of the whole run as a task sees them."""
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def run_setting(task_cfg, key):
    """A setting of the whole run (e.g. 'checkpoint.save_dir'), read from the full config above
    the task's (fairseq keeps the task config's parent); None for a task config on its own."""
    try:
        return OmegaConf.select(task_cfg, f"..{key}")
    except OmegaConfBaseException:
        return None
