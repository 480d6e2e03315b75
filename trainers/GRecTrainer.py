"""The original layout's name for trainers/grec_trainer.py (RRec's training loop); kept importable."""
from trainers.grec_trainer import *  # noqa: F401,F403
from trainers.grec_trainer import GRecTrainer, RRecTrainingArguments  # noqa: F401
