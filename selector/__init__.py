"""convplan.selector: networks, the memory model and the ILP that picks algorithms per layer.

Depends on `profiles` and `kernels`, never on `api`.
"""
