"""What pyproject.toml cannot declare: the wheel carries the step notebooks and leaves the development tooling out.

The notebooks have one copy, notebooks/ at the top of the checkout; the wheel ships them as helpers/notebooks/*.ipynb
(helpers.paths finds them there when no checkout is around). The local test deployment, the sample data and the demo
need the checkout (local_deployment/, node_modules/), so they are not in the wheel; an editable install of the
checkout (make setup) maps the whole helpers/ folder and still provides them.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: helpers modules that only work in a checkout (tests/test_packaging.py checks the wheel leaves them out).
DEVELOPMENT_MODULES = frozenset({"local_deployment", "sample_data", "demo", "scaffold"})


class BuildWithoutDevelopmentModules(build_py):
    """Leaves the development modules out, both as modules and as the package data that `**/*` also matches."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "helpers" and m[1] in DEVELOPMENT_MODULES) and not _a_migrations_test(package, m[1])]

    def find_data_files(self, package: str, src_dir: str) -> list[str]:
        development = {os.path.join(src_dir, f"{name}.py") for name in DEVELOPMENT_MODULES} if package == "helpers" else set()
        return [
            path for path in super().find_data_files(package, src_dir)
            if path not in development and not _a_migrations_test(package, os.path.basename(path).removesuffix(".py"))
        ]


def _a_migrations_test(package: str, module: str) -> bool:
    """A migration's tests live beside it (helpers/migrations/m*/test_*.py) but are not part of the wheel."""
    return package.startswith("helpers.migrations.") and module.startswith("test_")


setup(
    packages=[*find_packages(include=["helpers", "helpers.*"]), "helpers.notebooks"],
    package_dir={"helpers.notebooks": "notebooks"},
    # Every file under helpers/ (a migration's labels or docs, say) but bytecode, and the notebooks.
    package_data={"helpers": ["**/*"], "helpers.notebooks": ["*.ipynb"]},
    exclude_package_data={"": ["*.pyc", "**/__pycache__/*"]},
    cmdclass={"build_py": BuildWithoutDevelopmentModules},
)
