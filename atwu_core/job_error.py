"""The error a job stops with; its own module so that the job's parts (setup, optimiser, checks) can raise it."""


class JobError(RuntimeError):
    """The job stopped; the run folder's status says why and keeps the records written so far."""
