"""The ground floor's contracts: the errors a user can act on, and the exit codes of a job.

Every module raises its own subclass (SpecError, BackendError, BuildError, StorageError,
ModelError, DataError, ...) with a message that names the file, field or resource at fault; the
CLI prints any of them as one line and exits EXIT_BAD_INPUT, and lets anything else through as the
bug it is. Standard library only, and no import of ours: the trainers inside the images raise and
return these too.
"""

# Exit codes of the entry command and the trainers (ARCHITECTURE.md, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2  # the job file or the data: fix it and run again
EXIT_STOPPED = 75  # stopped on SIGTERM after saving a checkpoint (down, preemption): run again to resume


class LauncherError(Exception):
    """A problem in the user's input or surroundings, told in one line."""


class BackendError(LauncherError):
    """Where or how the job runs cannot be done as asked (cloud, accelerator, credentials)."""


class DataError(LauncherError):
    """Bad input data; str() is one line naming the file and line."""
