"""The installed distribution's version, read from its metadata (pyproject.toml is the
one place the number is written)."""

from importlib import metadata


def _installed_version() -> str:
    try:
        return metadata.version("statetree")
    except metadata.PackageNotFoundError:  # imported from a source tree never installed
        return "0+unknown"


__version__: str = _installed_version()
