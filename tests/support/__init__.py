"""Helpers shared by several test folders (no tests in here)."""
