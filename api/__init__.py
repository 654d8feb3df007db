"""convplan.api: what users call: the command line (`cli/`), the HTTP service (`service/`), the
Python interface (`library`) and batch planning (`batch`)."""
