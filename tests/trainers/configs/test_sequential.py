"""trainers/configs/sequential.py: compare_model/sasrec.py's settings."""
from __future__ import annotations


def test_the_config_offers_every_model():
    """--model's choices (trainers/configs/sequential.py, torch-free) are the models models/sequential.py builds."""
    from models.sequential import MODELS
    from trainers.configs.sequential import MODEL_NAMES, PAPER_HIDDEN, PAPER_LOSS

    assert set(MODEL_NAMES) == set(MODELS) == set(PAPER_LOSS) == set(PAPER_HIDDEN)
