"""convplan.profiles: measured costs of each algorithm on this machine, and where they are kept.

`Profiler` measures `requests` (a convolution algorithm on a layer spec, a layout transform,
another operator in a layout) once per machine fingerprint and keeps them in the SQLite
`CostStore`; `analytic` estimates what was not measured. How the missing costs are measured is
the profiler's backend: `InProcess` here (the default), or `DaskBackend` on the Dask workers
that are this machine (`remote`). Depends on `kernels` only.
"""

from .fingerprint import fingerprint_id, machine_fingerprint
from .measurement import Measurement
from .profiler import InProcess, MeasuringBackend, MeasuringJob, Profiler, ProfileStats
from .remote import DaskBackend
from .requests import ConvRequest, OpRequest, TransformRequest
from .store import CostStore, default_db_path

__all__ = [
    "ConvRequest",
    "CostStore",
    "DaskBackend",
    "InProcess",
    "Measurement",
    "MeasuringBackend",
    "MeasuringJob",
    "OpRequest",
    "ProfileStats",
    "Profiler",
    "TransformRequest",
    "default_db_path",
    "fingerprint_id",
    "machine_fingerprint",
]
