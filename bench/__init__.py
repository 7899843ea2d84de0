"""Benchmarks: each measures rusm side by side with its baseline in one run.

Runs in: a benchmark process of its own (it starts the real daemon).
"""
