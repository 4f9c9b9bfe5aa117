class DataError(Exception):
    """Bad input data or settings (a corpus definition, a source corpus, an output folder).

    The message names the file, line or parameter at fault; the CLI prints it as one line.
    """
