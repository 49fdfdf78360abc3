"""The one packaging rule pyproject.toml cannot state: conf/ ships inside the package as ``posttrain.conf``.

conf/ stays at the top of the repository (the layout names it). Both the wheel and the editable
install map it to the package ``posttrain.conf``, where Hydra finds it as ``pkg://posttrain.conf``
(posttrain/paths.py). Every folder is listed as a package so that data folders (posttrain/data,
conf/model, ...) ship without setuptools' "absent from packages" warning; the file patterns that
ship are in pyproject.toml ([tool.setuptools.package-data]).
"""

from setuptools import find_namespace_packages, setup


def _packages(where: str, name: str) -> list[str]:
    """``name`` and every folder below ``where``, named as subpackages of ``name``."""
    return [name, *(f"{name}.{p}" for p in find_namespace_packages(where=where, exclude=["*__pycache__*"]))]


setup(packages=[*_packages("posttrain", "posttrain"), *_packages("conf", "posttrain.conf")],
      package_dir={"posttrain.conf": "conf"})
