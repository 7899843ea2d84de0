"""Tests that run real parts of rusmd inside the test process (no daemon)."""
