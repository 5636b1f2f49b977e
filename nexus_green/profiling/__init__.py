"""Profiling tools (an app layer): see docs/profiling.md."""
