"""The library's own errors: what it raises on purpose, with a message for the user that names
the flag, field or file and the fix. The CLI prints these without a traceback and exits with
their `exit_status`; any other exception is a bug and shows its traceback.

Each class also derives from the builtin error it refines, so `except ValueError` (and
`pytest.raises(ValueError)`) keep catching bad input.
"""


class DitJaxError(Exception):
  """Base of the library's errors; `exit_status` is the CLI's exit status for it."""
  exit_status = 1


class InputError(DitJaxError, ValueError):
  """Bad input: a flag, a config value, a file's content, a model that cannot do the request."""
  exit_status = 2


class MissingFileError(DitJaxError, FileNotFoundError):
  """A file or folder the user named (or a run needs) is not there; the message says which."""
  exit_status = 2


class MissingPackageError(DitJaxError, ImportError):
  """An optional package is not installed; the message names the extra or package to install."""
  exit_status = 2


class RunFailedError(DitJaxError):
  """A run that started well and failed: divergence, an I/O failure, a step too big for a chip."""
  exit_status = 1


class StorageError(RunFailedError, OSError):
  """A disk or bucket could not be read or written (unreachable, full); the message names the
  path and says what was kept."""
