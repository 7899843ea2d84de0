"""rusmctl: the control client of a running rusmd.

Runs in: rusmctl (a short-lived CLI process; stdlib only).
"""
