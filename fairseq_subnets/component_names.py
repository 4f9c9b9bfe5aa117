"""The names under which the plugin registers its fairseq components, and the stock names they
extend, in one place: the code that registers a component, the code that writes its name into a
checkpoint or a command line, and the code that converts it back to the stock component all read
them here. Importing this module imports nothing, so the CLI and the pure-torch layers may too."""

PLUGIN_PREFIX = "subnets_"
"""Every name the plugin registers starts with it, and without it names the stock component it
extends (which `export` writes back for stock fairseq)."""


def plugin_name(stock_name: str) -> str:
    return PLUGIN_PREFIX + stock_name


STOCK_CTC_MODEL = "wav2vec_ctc"
PLUGIN_CTC_MODEL = plugin_name(STOCK_CTC_MODEL)

STOCK_FINETUNING_TASK = "audio_finetuning"
PLUGIN_FINETUNING_TASK = plugin_name(STOCK_FINETUNING_TASK)
STOCK_PRETRAINING_TASK = "audio_pretraining"
PLUGIN_PRETRAINING_TASK = plugin_name(STOCK_PRETRAINING_TASK)
PLUGIN_MULTILINGUAL_TASK = plugin_name("multilingual_finetuning")
"""No stock task holds several languages: `export` writes one language's checkpoint under the
plugin's single-language task, or a bundle."""

STOCK_CTC_CRITERION = "ctc"
PLUGIN_CTC_CRITERION = plugin_name(STOCK_CTC_CRITERION)

STOCK_TRI_STAGE = "tri_stage"
PLUGIN_TRI_STAGE = plugin_name(STOCK_TRI_STAGE)
