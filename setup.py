"""Package list for setuptools (the rest of the metadata is in pyproject.toml).

The Alembic scripts live in the repository's top-level `migrations/` folder
and are packaged as `racli._migrations` (pyproject's package-dir maps the
name), which `packages.find` alone cannot express.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["racli", "racli.*", "racli_models", "racli_models.*"])
    + ["racli._migrations"]
)
