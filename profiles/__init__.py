"""convplan.profiles: measured costs of each algorithm on this machine, and where they are kept.

Depends on `kernels` only.
"""
