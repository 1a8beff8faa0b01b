"""saom_ros: whole-object, class-labelled instance segmentation (SAOM) for ROS 2."""
