"""A package only the packed environment has."""

import sys


def hello() -> str:
    return f"hello from a conda-pack environment ({sys.prefix.rsplit('/', 1)[-1]})"
