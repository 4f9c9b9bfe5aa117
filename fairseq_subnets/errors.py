"""The error every layer raises for a bad setting or file, importable without fairseq.

The technique folders check their config keys before fairseq builds anything, and the fairseq
glue (`plugin.components.errors.one_line_errors`) turns this error into one line on stderr; it lives here,
below both, so that a technique never imports the glue that hosts it.
"""


class PluginInputError(ValueError):
    """A config key of our task, model or criterion, or a file it names, is unusable; the message
    names the key or the file."""
