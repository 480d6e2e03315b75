"""models/sequential.py (SASRec, GRU4Rec): a model's states do not depend on how much left padding a batch has.
Training and ranking end to end (compare_model/sasrec.py): tests/test_sasrec.py."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_states_do_not_depend_on_padding(name):
    """The same sequences, right-aligned in 5 or 12 columns (and clipped): identical states for the real items, so
    how long a batch's longest history is changes no score."""
    from models.sequential import MODELS

    torch.manual_seed(0)
    model = MODELS[name](n_items=20, max_len=12, hidden_size=8, **({"num_blocks": 2} if name == "sasrec" else {}))
    model.eval()
    short = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0, 7]])
    wide = torch.cat([torch.zeros(3, 7, dtype=torch.long), short], 1)
    a, b = model(short), model(wide)[:, -5:]
    real = short != 0
    assert torch.allclose(a[real], b[real], atol=1e-5)
    assert torch.allclose(model.user_vectors(model.clip(wide)), a[:, -1], atol=1e-5)
    assert model.clip(wide).shape[1] == 5
