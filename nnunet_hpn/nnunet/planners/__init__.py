"""HPN experiment planners (found by ``nnUNetv2_plan_and_preprocess -pl HPNPlanner`` through the start-up hook)."""
from nnunet_hpn.nnunet.planners.hpn_planner import HPNPlanner, HPNResDSNPlanner

__all__ = ["HPNPlanner", "HPNResDSNPlanner"]
