"""compare_model/sasrec.py's settings: SequentialConfig, one flag per field (SASRec and GRU4Rec, their papers'
values by default). Importable without torch: the script builds its parser from here and imports the trainer
(trainers/sequential_trainer.py) only after the flags are parsed."""
from __future__ import annotations

from dataclasses import dataclass

from foundation.config import SEED_MAX, TrainerConfig, option, require

G_MODEL = "model (left unset: the paper's value for --model)"
G_TRAIN, G_DATA, G_VALID, G_RUN = ("training", "data and candidates (compare_model/rrec.py's flags)",
                                   "validation and early stopping", "run: device, output, resume")
LOSSES = ("auto", "bce", "ce")
PAPER_LOSS = {"sasrec": "bce", "gru4rec": "ce"}
PAPER_HIDDEN = {"sasrec": 50, "gru4rec": 100}
MODEL_NAMES = tuple(PAPER_LOSS)  # models/sequential.MODELS (tests/test_sasrec.py checks they agree)


@dataclass
class SequentialConfig(TrainerConfig):
    """Every setting of compare_model/sasrec.py (one flag each)."""

    # Settings that do not change the trained model: a rerun may change them and keep the training.
    OPERATIONAL = ("split", "num_samples", "reference_json", "K_eval", "full_ranking", "rank_repeat_targets",
                   "device", "eval_batch_size", "output_dir", "output_file", "overwrite_output_dir", "no_progress")

    # model
    model: str = option("sasrec", "sasrec (Kang & McAuley, ICDM 2018) | gru4rec (Hidasi et al., ICLR 2016; CIKM 2018)",
                        group=G_MODEL, choices=MODEL_NAMES)
    hidden_size: int | None = option(None, "item and hidden vector size (SASRec paper: 50; GRU4Rec: 100 units)",
                                     group=G_MODEL)
    num_blocks: int = option(2, "SASRec: self-attention blocks (paper: 2)", group=G_MODEL)
    num_heads: int = option(1, "SASRec: attention heads (paper: 1)", group=G_MODEL)
    num_layers: int = option(1, "GRU4Rec: GRU layers (paper: 1)", group=G_MODEL)
    dropout: float | None = option(None, "SASRec: dropout of embeddings, attention and FFN (paper: 0.2 on "
                                         "MovieLens-1M, 0.5 on the sparse Amazon and Steam data; unset: 0.5 when "
                                         "the train split's user-item density is below 1%%, else 0.2); GRU4Rec: "
                                         "dropout of the GRU output (unset: 0.3, the official cross-entropy "
                                         "parameter file)", group=G_MODEL)
    max_len: int = option(50, "longest item sequence the model reads, newest items kept (SASRec paper: 50 on "
                              "Amazon); at evaluation the example's stored history, cut to it", group=G_MODEL)
    # training
    loss: str = option("auto", "auto: the model's paper loss (SASRec bce: binary cross-entropy with one sampled "
                               "negative per position; GRU4Rec ce: cross-entropy over the batch's targets plus "
                               "--num_negatives shared sampled items) | bce | ce", group=G_TRAIN, choices=LOSSES)
    num_negatives: int = option(2048, "ce: shared uniform negatives per batch (GRU4Rec's n_sample 2048); every item "
                                      "when the catalogue is no larger", group=G_TRAIN)
    learning_rate: float = option(1e-3, "Adam learning rate, betas (0.9, 0.98) (SASRec paper: 1e-3)", group=G_TRAIN,
                                  aliases=("--lr",))
    batch_size: int = option(128, "users per step (SASRec paper: 128)", group=G_TRAIN)
    num_epochs: int = option(200, "epochs at most (one pass over the train users each; SASRec's code: 200)",
                             group=G_TRAIN)
    seed: int = option(42, "seed of the initialisation, the data order, negatives and dropout, and of the examples "
                           "and candidates (test.py's rule: the same seed gives test.py's candidates)",
                       group=G_TRAIN, min=0, max=SEED_MAX)
    # data and candidates
    dataset_dir: str = option("demo/data/Video_Games_5_2021-1-2023-12", "processed dataset (ours or upstream "
                                                                         "R2ec's layout)", group=G_DATA,
                              aliases=("--dataset_path",))
    split: str = option("test", "the split ranked after training", group=G_DATA, choices=("train", "valid", "test"))
    num_samples: int = option(-1, "examples to rank (<= 0: all; with --reference_json its first N)", group=G_DATA)
    reference_json: str | None = option(None, "rank exactly this result JSON's examples and candidates (test.py's or "
                                              "any baseline's), in its order", group=G_DATA)
    K: int | None = option(None, "candidates per example, also in validation (default: the reference's count, "
                                 "else 20)", group=G_DATA)
    K_eval: int | None = option(None, "extra metric cut-off (default: min(10, K))", group=G_DATA)
    full_ranking: bool = option(True, "also rank the whole catalogue, pad and history masked (the paper's NDCG/"
                                      "HR@5/10/20; --no-full_ranking skips it)", group=G_DATA)
    rank_repeat_targets: bool = option(False, "full ranking: keep a target that is also a history item rankable "
                                              "(rrec.py's flag; by default it is masked with the history: a miss)",
                                       group=G_DATA)
    # validation
    valid_samples: int = option(10000, "valid examples per validation (seeded choice; -1: all; 0: no validation, "
                                       "the last epoch's model is used)", group=G_VALID)
    eval_every: int = option(1, "validate every N epochs (and after the last)", group=G_VALID)
    patience: int = option(10, "stop after N validations without a better valid NDCG@10 (0: never)", group=G_VALID)
    # run
    device: str = option("auto", "auto|cpu|cuda|cuda:N", group=G_RUN)
    eval_batch_size: int = option(256, "examples per forward when ranking", group=G_RUN)
    output_dir: str | None = option(None, "checkpoints, metrics.jsonl, args.json and the result JSON (default: "
                                          "outputs/{model})", group=G_RUN)
    output_file: str | None = option(None, "result JSON (default: {output_dir}/results.json; results_{split}.json "
                                           "for another split)", group=G_RUN)
    overwrite_output_dir: bool = option(False, "train afresh: the run's checkpoints, logs and result JSON are removed "
                                               "first (otherwise a rerun continues and must use the same training "
                                               "settings)", group=G_RUN, aliases=("--no_resume",))
    no_progress: bool = option(False, "hide progress bars", group=G_RUN)

    def validate(self) -> None:
        if self.output_dir is None:
            self.output_dir = f"outputs/{self.model}"
        require(self.model in MODEL_NAMES, f"--model {self.model!r}: must be one of {'|'.join(MODEL_NAMES)}")
        require(self.loss in LOSSES, f"--loss {self.loss!r}: must be one of {'|'.join(LOSSES)}")
        for flag in ("num_blocks", "num_heads", "num_layers", "max_len", "batch_size", "num_epochs", "eval_every",
                     "eval_batch_size", "num_negatives"):
            require(getattr(self, flag) >= 1, f"--{flag} {getattr(self, flag)}: must be >= 1")
        require(self.hidden_size is None or self.hidden_size >= 1, f"--hidden_size {self.hidden_size}: must be >= 1")
        require(self.model != "sasrec" or (self.hidden_size or PAPER_HIDDEN["sasrec"]) % self.num_heads == 0,
                f"--num_heads {self.num_heads}: must divide --hidden_size {self.hidden_size or PAPER_HIDDEN['sasrec']}")
        require(self.dropout is None or 0 <= self.dropout < 1, f"--dropout {self.dropout}: must be in [0, 1)")
        require(self.learning_rate > 0, f"--learning_rate {self.learning_rate}: must be > 0")
        require(self.patience >= 0, f"--patience {self.patience}: must be >= 0")
        require(self.valid_samples >= -1, f"--valid_samples {self.valid_samples}: must be -1 (all), 0 or more")
        require(self.K is None or self.K >= 2, f"--K {self.K}: must be >= 2 (the target plus a negative)")
        require(self.K_eval is None or self.K_eval >= 1, f"--K_eval {self.K_eval}: must be >= 1")

    def trajectory_settings(self) -> list[str]:
        """The settings a trained run is bound to: a rerun that changes one must retrain (--overwrite_output_dir)."""
        return [k for k in self.to_dict() if k not in self.OPERATIONAL]

    @property
    def paper_loss(self) -> str:
        return PAPER_LOSS[self.model] if self.loss == "auto" else self.loss
