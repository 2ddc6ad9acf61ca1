"""`nightjar bench`: sustained throughput, latency and per-stage cost on the local services
(main.py runs the scenarios; io, machine, monitor, stats and ceiling measure).
"""
