"""The one error of a batch that stops it before anything is planned."""


class BatchError(ValueError):
    """Bad arguments or an unusable cluster: nothing was planned."""
