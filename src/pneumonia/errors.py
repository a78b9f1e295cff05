"""The base class of the errors a user can fix; entry points print them without a traceback."""


class PipelineError(Exception):
    """Bad input or params: the message names the file, the param or the fix."""
