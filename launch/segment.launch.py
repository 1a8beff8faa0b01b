"""Launch saom_ros segment_node on one camera.

    ros2 launch saom_ros segment.launch.py image:=/camera/color/image_raw \
        checkpoint:=/path/to/sam_vit_b_01ec64.pth device:=cuda

is the same node as

    ros2 run saom_ros segment_node --ros-args --params-file <share>/saom_ros/config/saom.yaml \
        -p checkpoint:=/path/to/sam_vit_b_01ec64.pth -p device:=cuda \
        -r image:=/camera/color/image_raw -r image/compressed:=/camera/color/image_raw/compressed

Arguments left empty keep the params file's value.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    "image": ("image", "input image topic (image_transport base; compressed: <image>/compressed)"),
    "checkpoint": ("", "model file; empty: the params file's (default: the packaged model)"),
    "device": ("", "auto, cpu, cuda or cuda:N; empty: the params file's"),
    "params_file": (PathJoinSubstitution([FindPackageShare("saom_ros"), "config", "saom.yaml"]),
                    "node parameters"),
    "namespace": ("", "namespace of the node and its topics"),
    "use_compressed": ("", "true: subscribe to <image>/compressed; empty: the params file's"),
}
# Launch arguments that override the node parameter of the same name when given.
OVERRIDES = ("checkpoint", "device", "use_compressed")


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {name: arg(name) for name in OVERRIDES if arg(name)}
    if "use_compressed" in overrides:
        overrides["use_compressed"] = overrides["use_compressed"].lower() in ("true", "1", "yes")
    image = arg("image")
    return [Node(
        package="saom_ros",
        executable="segment_node",
        name="segment_node",
        namespace=arg("namespace"),
        parameters=[arg("params_file"), overrides],
        remappings=[("image", image), ("image/compressed", f"{image}/compressed")],
        output="screen",
    )]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_node)])
