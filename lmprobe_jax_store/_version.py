"""The installed lmprobe-jax version, recorded in every manifest (a store is served only to the version
that wrote it or one with the same version string)."""

from importlib.metadata import PackageNotFoundError, version


def library_version() -> str:
    try:
        return version("lmprobe-jax")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
