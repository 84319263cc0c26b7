"""The one exception a user can cause: the CLI prints it as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in a config, a topology, a shape or a file, stated in one line."""
