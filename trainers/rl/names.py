"""The names the RL settings choose among, importable without torch: the config modules (trainers/configs/)
offer them as flag choices before any trainer, and so torch, is imported."""
from __future__ import annotations

# RecPO's per-group advantages (trainers/rl/advantages.group_advantages). gaussian: upstream R2ec's default (GRPO);
# rloo: true leave-one-out; upstream_leave_one_out: what upstream calls 'leave-one-out', r(1 + 1/G) - mean, which
# is not RLOO (kept only to reproduce it).
ADVANTAGE_TYPES = ("gaussian", "rloo", "upstream_leave_one_out")
