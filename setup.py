from glob import glob

from setuptools import setup
from setuptools.command.develop import develop

package_name = "saom_ros"


class Develop(develop):
    """`colcon build --symlink-install` runs `setup.py develop`, whose console scripts get the
    building Python (colcon's, e.g. /usr/bin/python3 without torch) and ignore setup.cfg's
    ``[build_scripts] executable``: give them that interpreter line too (python3 from PATH)."""

    def install_wrapper_scripts(self, dist):
        from setuptools.command.develop import VersionlessRequirement
        from setuptools.command.easy_install import ScriptWriter

        if self.exclude_scripts:
            return
        header = ScriptWriter.get_header(
            executable=self.get_finalized_command("build_scripts").executable)
        for args in ScriptWriter.best().get_args(VersionlessRequirement(dist), header):
            self.write_script(*args)

setup(
    name=package_name,
    version="0.1.0",
    # training/ is top-level in the source tree; saom_ros/training is a relative symlink to it,
    # so every install mode (pip, editable, colcon, colcon --symlink-install, which links only
    # top-level packages) finds it as saom_ros.training without a package_dir mapping.
    packages=[package_name, f"{package_name}.training"],
    package_data={package_name: ["data/*.pt", "data/demo_frames/*.png"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.xml")),
        # ros2 run / launch_ros look for executables in lib/<package>; pip ignores setup.cfg's
        # install_scripts, so ship small launchers there as data files.
        (f"lib/{package_name}", glob("scripts/lib/*")),
    ],
    # Everything saom_ros/ and training/ import (test_packaging checks it); only `saom-train
    # collect` needs more (ai2thor, see README). tensorboard: `saom-train train` logs to it.
    install_requires=["numpy", "scipy", "Pillow", "PyYAML", "torch", "torchvision",
                      "segment-anything", "pycocotools", "tqdm", "opencv-python-headless", "numba",
                      "tensorboard"],
    zip_safe=True,
    maintainer="saom_ros developers",
    maintainer_email="saom-ros@example.com",
    description="Whole-object, class-labelled instance segmentation (SAOM) for ROS 2",
    license="Apache-2.0",
    # setuptools >= 80 has no easy_install-based develop (nor a colcon that runs it)
    cmdclass={"develop": Develop} if hasattr(develop, "install_wrapper_scripts") else {},
    entry_points={
        "console_scripts": [
            "segment_node = saom_ros.node_main:main",
            "saom-segment = saom_ros.node_main:main",
            "saom-train = saom_ros.training.cli:main",
        ],
    },
)
