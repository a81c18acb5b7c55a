"""T5X's `t5x.partitioning` names used in gin files, as this project's objects."""
from gbt_t5x.train.partitioning import PjitPartitioner, standard_logical_axis_rules

__all__ = ["PjitPartitioner", "standard_logical_axis_rules"]
