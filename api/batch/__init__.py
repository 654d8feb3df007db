"""Planning many networks at once, in this process or on a Dask cluster, and profiling on one.

By job (each module imports only those above it):

    errors     `BatchError`: bad arguments or an unusable cluster, before anything is planned
    outputs    the plan files, written as each network is planned, and the summary
    inputs     `collect_inputs`: the networks named, each read once
    local      one network planned here (`plan_one`), in a child under a deadline
               (`plan_in_child`), and `run_local`
    cluster    `dask_client` (a scheduler or a local cluster) and `run_dask`
    profiling  `profile_on_cluster`: the profiler with the Dask backend, and its report

Dask is imported only when a cluster is used.
"""

from .cluster import SCATTER_BYTES, dask_client, environ_kept, run_dask
from .errors import BatchError
from .inputs import NETWORK_SUFFIXES, Kind, NetworkInput, collect_inputs
from .local import OnResult, parse_network, plan_in_child, plan_one, run_local
from .outputs import PLAN_SUFFIX, SUMMARY_FILE, summarize, write_atomic, write_outputs, write_plan
from .profiling import ClusterProfile, WorkerReport, profile_on_cluster

__all__ = [
    "NETWORK_SUFFIXES",
    "PLAN_SUFFIX",
    "SCATTER_BYTES",
    "SUMMARY_FILE",
    "BatchError",
    "ClusterProfile",
    "Kind",
    "NetworkInput",
    "OnResult",
    "WorkerReport",
    "collect_inputs",
    "dask_client",
    "environ_kept",
    "parse_network",
    "plan_in_child",
    "plan_one",
    "profile_on_cluster",
    "run_dask",
    "run_local",
    "summarize",
    "write_atomic",
    "write_outputs",
    "write_plan",
]
