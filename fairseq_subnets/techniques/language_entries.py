"""`[LANGUAGE<separator>VALUE, ...]` settings, shared by the techniques and tools that take one
value per language (mask files per language, bundle sources)."""
from ..errors import PluginInputError


def parse_language_entries(entries, separator: str, where: str, form: str):
    """[LANGUAGE<separator>VALUE, ...] -> {language: value}, refusing malformed and repeated
    entries with a PluginInputError naming `where` (a config key or a command) and the `form`."""
    values = {}
    for entry in entries:
        language, found, value = str(entry).partition(separator)
        if not found or not language or not value:
            raise PluginInputError(f"{where} entry {entry!r}: expected {form}")
        if language in values:
            raise PluginInputError(f"{where} names language {language!r} twice")
        values[language] = value
    return values
