"""convplan.api: the `convplan` command line (and, later, the HTTP service)."""
