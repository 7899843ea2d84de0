"""The process layer: fork, reap, signals, systemd.

Runs in: main.
"""
