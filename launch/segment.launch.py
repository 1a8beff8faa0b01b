"""Launch saom_ros segment_node on one camera.

    ros2 launch saom_ros segment.launch.py image:=/camera/color/image_raw \
        checkpoint:=/path/to/sam_vit_b_01ec64.pth device:=cuda pred_iou_thresh:=0.8

is the same node as

    ros2 run saom_ros segment_node --ros-args --params-file <share>/saom_ros/config/saom.yaml \
        -p checkpoint:=/path/to/sam_vit_b_01ec64.pth -p device:=cuda -p pred_iou_thresh:=0.8 \
        -r image:=/camera/color/image_raw

The input topics ``image``, ``depth`` and ``camera_info`` are launch arguments that remap them.
Every node parameter is a launch argument of the same name (the list comes from the node's own
parameter table, so new parameters need no change here); one left empty keeps the params file's
value. ``ros2 launch saom_ros segment.launch.py --show-args`` lists them.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from saom_ros.node_parameters import launch_value, parameter_table

# The node's input topics, each a launch argument that remaps it.
TOPICS = {
    "image": ("image", "input image topic (image_transport base; compressed: <image>/compressed)"),
    "depth": ("depth", "depth image registered to the colour image (with use_depth)"),
    "camera_info": ("camera_info", "the colour camera's CameraInfo (with use_depth)"),
}
ARGUMENTS = {
    **TOPICS,
    "params_file": (PathJoinSubstitution([FindPackageShare("saom_ros"), "config", "saom.yaml"]),
                    "node parameters"),
    "namespace": ("", "namespace of the node and its topics"),
}


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {name: launch_value(name, arg(name), default)
                 for name, default, _ in parameter_table() if arg(name)}
    return [Node(
        package="saom_ros",
        executable="segment_node",
        name="segment_node",
        namespace=arg("namespace"),
        parameters=[arg("params_file"), overrides],
        remappings=[(topic, arg(topic)) for topic in TOPICS],
        output="screen",
    )]


def generate_launch_description():
    fixed = [DeclareLaunchArgument(name, default_value=default, description=text)
             for name, (default, text) in ARGUMENTS.items()]
    from_table = [DeclareLaunchArgument(name, default_value="", description=(
        f"{descriptor.description}; empty: the params file's value"))
        for name, _, descriptor in parameter_table()]
    return LaunchDescription(fixed + from_table + [OpaqueFunction(function=_node)])
