"""What pyproject.toml cannot declare: the wheel carries the step notebooks and leaves the development tooling out.

The notebooks have one copy, notebooks/ at the top of the checkout; the wheel ships them as helpers/notebooks/*.ipynb
(helpers.runner finds them there when no checkout is around). The local test deployment, the sample data and the demo
need the checkout (local_deployment/, node_modules/), so they are not in the wheel; an editable install of the
checkout (make setup) maps the whole helpers/ folder and still provides them.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: helpers modules that only work in a checkout (tests/test_packaging.py checks the wheel leaves them out).
DEVELOPMENT_MODULES = frozenset({"local_deployment", "sample_data", "demo"})


class BuildWithoutDevelopmentModules(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "helpers" and m[1] in DEVELOPMENT_MODULES)]


setup(
    packages=[*find_packages(include=["helpers", "helpers.*"]), "helpers.notebooks"],
    package_dir={"helpers.notebooks": "notebooks"},
    package_data={"helpers.notebooks": ["*.ipynb"]},
    cmdclass={"build_py": BuildWithoutDevelopmentModules},
)
