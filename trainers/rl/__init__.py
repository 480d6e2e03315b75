"""RL maths: pure tensor functions with no I/O (Plackett-Luce policy, losses, advantages, KL)."""
