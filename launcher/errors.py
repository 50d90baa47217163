"""The one base class of the errors a user can act on.

Every module raises its own subclass (SpecError, BackendError, BuildError, StorageError,
ModelError, ...) with a message that names the file, field or resource at fault; the CLI prints
any of them as one line and exits 2, and lets anything else through as the bug it is.
Standard library only: the trainers import modules that raise these inside the images.
"""


class LauncherError(Exception):
    """A problem in the user's input or surroundings, told in one line."""
