"""Benchmarks: each module runs as ``python -m bench.<name>`` and prints its figures and the machine.

Timing lives here and never in the tests. Results are collected in ``bench/RESULTS.md``.
"""
