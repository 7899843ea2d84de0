"""The actor runtime: mailboxes, links, monitors, names, timers, supervisors.

Runs in: worker (``table``, ``supervisor``) and any (``signals``).
"""
