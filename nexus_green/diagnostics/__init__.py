"""Diagnostics toolkit (issue 19): checks that report every problem at once, and ``nexus-green diagnose``."""
