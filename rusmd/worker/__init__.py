"""The worker: one forked OS process running a uvloop loop.

Runs in: worker.

- ``boot``     what the main process hands a worker at fork.
- ``entry``    the child side of fork: become a worker, run it, exit.
- ``runtime``  the worker's loop: channel to main, heartbeats, the mesh, drain.
- ``heap``     hands the C heap's free pages back once a burst of processes ended.
"""
