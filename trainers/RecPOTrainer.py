"""The original layout's name for trainers/recpo_trainer.py (RRec's RecPO step); kept importable."""
from trainers.recpo_trainer import *  # noqa: F401,F403
from trainers.recpo_trainer import RecPOTrainer, run_training  # noqa: F401
