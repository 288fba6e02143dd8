"""Maps the top-level folders onto the ``rlkeel.*`` import packages (DESIGN §2).

setuptools cannot discover packages under a renamed root by itself, so the package list is
computed here from the folders; everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "rlkeel": "rlkeel_pkg",
    "rlkeel.client": "client",
    "rlkeel.server": "server",
    "rlkeel.trainer": "trainer",
    "rlkeel.cli": "cli",
    "rlkeel.migrations": "migrations",
    "rlkeel.dashboards": "dashboards",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in FOLDERS.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(where=folder):
            packages.append(f"{name}.{sub}")
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
