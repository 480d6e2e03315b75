"""Every trainer's settings, one module each (ppo: train.py, rrec: compare_model/train_rrec.py, sft:
sft_train/train_sft.py, sequential: compare_model/sasrec.py): option() dataclasses that foundation/config turns into
flags. None of them imports torch, transformers or a trainer at import time, so a script builds its parser (and
answers --help) in a fraction of a second and imports its trainer only once the flags are parsed
(tests/test_cli_help.py checks it)."""
