"""Supervision: OTP supervisor semantics as pure decision logic.

Runs in: main (the worker pool and residents) and worker (guest supervisors).
"""
