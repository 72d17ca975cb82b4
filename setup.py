"""What pyproject.toml cannot declare: the wheel carries the step notebooks and leaves the development tooling out.

The notebooks have one copy, notebooks/ at the top of the checkout; the wheel ships them as helpers/notebooks/*.ipynb
(helpers.paths finds them there when no checkout is around). The local test deployment, the sample data, the demo and the scaffold
(helpers/devtools/) need the checkout (local_deployment/, node_modules/), so they are not in the wheel; an editable install of the
checkout (make setup) maps the whole helpers/ folder and still provides them.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: The helpers package that only works in a checkout (tests/test_packaging.py checks the wheel leaves it out).
DEVELOPMENT_PACKAGE = "helpers.devtools"


class BuildWithoutDevelopmentTools(build_py):
    """Leaves the development package's files out of the package data that `**/*` also matches, and each migration's
    tests (they live beside it: helpers/migrations/m*/test_*.py) out of the modules and the data."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        return [m for m in super().find_package_modules(package, package_dir) if not _a_migrations_test(package, m[1])]

    def find_data_files(self, package: str, src_dir: str) -> list[str]:
        development = os.path.join(src_dir, "devtools") + os.sep if package == "helpers" else None
        return [
            path for path in super().find_data_files(package, src_dir)
            if not (development and path.startswith(development))
            and not (os.sep + "migrations" + os.sep in path and os.path.basename(path).startswith("test_"))
        ]


def _a_migrations_test(package: str, module: str) -> bool:
    """A migration's tests live beside it (helpers/migrations/m*/test_*.py) but are not part of the wheel."""
    return package.startswith("helpers.migrations.") and module.startswith("test_")


setup(
    packages=[*find_packages(include=["helpers", "helpers.*"], exclude=[DEVELOPMENT_PACKAGE]), "helpers.notebooks"],
    package_dir={"helpers.notebooks": "notebooks"},
    # Every file under helpers/ (a migration's labels or docs, say) but bytecode, and the notebooks.
    package_data={"helpers": ["**/*"], "helpers.notebooks": ["*.ipynb"]},
    exclude_package_data={"": ["*.pyc", "**/__pycache__/*"]},
    cmdclass={"build_py": BuildWithoutDevelopmentTools},
)
