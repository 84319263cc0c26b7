"""The exceptions distsgd ends a run with, each stated in one line, each with its exit code.

- `UserError` (exit code 2): a mistake in a config, a topology, a shape, an option or a
  file: nothing was trained, or the run stopped before writing anything wrong.
- `Diverged` (exit code 3): the loss or the parameters stopped being finite; the metrics up
  to that step and the last checkpoint before it are kept.
- `Fault` (exit code 4): the environment failed: a peer process died or timed out, the
  disk is full. What was saved before stays intact.

The command line prints `distsgd: error: ...` (or `distsgd: diverged: ...`) and exits with
the code; the Python API raises the exception itself.
"""


class DistsgdError(Exception):
    """Base of every error distsgd ends a run with."""

    exit_code = 1
    label = "error"


class UserError(DistsgdError):
    """A mistake in a config, a topology, a shape, an option or a file, stated in one line."""

    exit_code = 2


class Diverged(DistsgdError):
    """The loss or the parameters became NaN or infinite at some step."""

    exit_code = 3
    label = "diverged"


class Fault(DistsgdError):
    """A failure of the environment: a peer rank died or timed out, the disk is full."""

    exit_code = 4
