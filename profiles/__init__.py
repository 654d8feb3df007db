"""convplan.profiles: measured costs of each algorithm on this machine, and where they are kept.

`profiler.Profiler` measures `requests` (a convolution algorithm on a layer spec, a layout
transform, another operator in a layout) once per machine fingerprint (`fingerprint`) and
keeps them in the SQLite `store.CostStore`; `analytic` estimates what was not measured. How
the missing costs are measured is the profiler's backend: `profiler.InProcess` here (the
default), or `remote.DaskBackend` on the Dask workers that are this machine. Depends on
`kernels` only.

Import from the modules: this package imports none of them, so reading the machine's
fingerprint (a compiled plan's loader does) loads neither SQLite, the settings nor Dask.
"""
