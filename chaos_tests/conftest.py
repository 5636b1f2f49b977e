"""Chaos suite (``make chaos``): fault-injection scenarios against the library.

The chaos issue fills this directory; until then ``make chaos`` reports that
it holds no tests and exits 0.
"""
