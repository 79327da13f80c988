"""A package only the PEX file has."""


def hello() -> str:
    return "hello from a PEX file"
