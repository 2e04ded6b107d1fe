"""What software made a result: recorded beside every store, checkpoint and evaluation."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

# The packages whose versions can change a result, by the distribution names pip knows.
DEFAULT_PACKAGES = ("attgmae", "torch", "timm")


def software_versions(packages=DEFAULT_PACKAGES, python: bool = False) -> dict:
    """{package: version or None when not installed}, plus ``python`` when asked.

    Nothing is imported: a package already loaded reports its ``__version__`` (torch's names its
    CUDA build, e.g. 2.14.1+cu130), the others the installed metadata.
    """
    versions = {}
    for name in packages:
        loaded = getattr(sys.modules.get(name.replace("-", "_")), "__version__", None)
        try:
            versions[name] = str(loaded) if loaded else version(name)
        except PackageNotFoundError:
            versions[name] = None
    if python:
        versions["python"] = platform.python_version()
    return versions
