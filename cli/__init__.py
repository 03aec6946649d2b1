"""hpatk.cli: the click application ``hpatk``."""
