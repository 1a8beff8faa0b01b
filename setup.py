from glob import glob

from setuptools import setup

package_name = "saom_ros"

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
    install_requires=["numpy", "PyYAML", "torch", "torchvision", "segment-anything",
                      "pycocotools", "tqdm", "opencv-python-headless", "numba"],
    zip_safe=True,
    maintainer="saom_ros developers",
    maintainer_email="saom-ros@example.com",
    description="Whole-object, class-labelled instance segmentation (SAOM) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "segment_node = saom_ros.segment_node:main",
            "saom-segment = saom_ros.segment_node:main",
            "saom-train = saom_ros.training.cli:main",
        ],
    },
)
