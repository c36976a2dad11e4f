"""Policy as code: the YAML file, its models, its checks and its report."""

from lethe.policy.model import Erasure, Policy, PolicyError, RetentionRule, TableRule, load_policy

__all__ = ["Erasure", "Policy", "PolicyError", "RetentionRule", "TableRule", "load_policy"]
