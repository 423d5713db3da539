"""Build script: metadata lives in pyproject.toml; this file only ships the start-up hook.

``nnunet_hpn_startup.pth`` must land at the top of site-packages (not inside the package) so that every Python
process of the environment, including nnU-Net's spawned workers, runs ``nnunet_hpn.nnunet.startup_hook``. setuptools has
no declarative way to place a top-level file, hence the small ``build_py`` / ``editable_wheel`` subclasses.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK_FILE = "nnunet_hpn_startup.pth"
HERE = Path(__file__).resolve().parent


class BuildPyWithStartupHook(build_py):
    """Copies the start-up hook ``.pth`` next to the package in the wheel."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(HERE / HOOK_FILE), str(Path(self.build_lib) / HOOK_FILE))

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / HOOK_FILE)]


class EditableWheelWithStartupHook(editable_wheel):
    """Editable installs (``pip install -e .``) get the same hook file at the root of the editable wheel."""

    def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(HERE / HOOK_FILE, Path(installation_dir) / HOOK_FILE)


setup(cmdclass={"build_py": BuildPyWithStartupHook, "editable_wheel": EditableWheelWithStartupHook})
