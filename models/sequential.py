"""Classical ID-based sequential recommenders on torch.nn modules: SASRec and GRU4Rec (docs/baselines.md).

Both read a batch of item-id sequences [B, L] (0 = pad), right-aligned: the newest item in the last column, pads
on the left. forward() returns one hidden state per position [B, L, H]; the state at a position predicts the item
that follows it, and the last column's state is the user's vector. Item scores are inner products with output
item vectors (logits / pair_scores), so the K candidates of an example and the whole catalogue are scored alike.

SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): item embeddings scaled by
sqrt(H) plus learned absolute position embeddings, dropout, `num_blocks` pre-LayerNorm blocks x + Dropout(
SA(LN(x))), x + Dropout(FFN(LN(x))) with causal attention and a point-wise two-layer ReLU FFN of width H
(nn.TransformerEncoderLayer(norm_first=True) is exactly that block), pads zeroed after every block, a final
LayerNorm; the prediction layer shares the item embedding. Attention never looks at a pad key (a pad query sees
itself only, and its output is zeroed), so the left padding of a sequence changes nothing.

GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016; Hidasi &
Karatzoglou, "Recurrent Neural Networks with Top-k Gains for Session-based Recommendations", CIKM 2018): an item
embedding, one GRU layer, dropout on its output, and separate output item vectors with a bias per item (the
official code's Wy, By). Sequences are packed, so the GRU starts from a zero state at each sequence's first
item whatever its padding.

The losses: bce_loss (SASRec's: binary cross-entropy of every position's next item against one sampled negative)
and sampled_softmax_loss (GRU4Rec 2018's cross-entropy over the batch's targets plus shared sampled negatives,
or over the whole catalogue when it is small).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SequentialRecommender(nn.Module):
    """The interface both models share (see the module docstring)."""

    n_items: int
    max_len: int

    def output_items(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(vectors, bias or None) of the given item ids (None: all ids 0..n_items)."""
        raise NotImplementedError

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, H]: the state after each sequence's newest item."""
        return self(seq)[:, -1]

    def logits(self, hidden: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., H] against a set of items shared by every row (None: all ids 0..n_items) -> [..., C]."""
        vec, bias = self.output_items(columns)
        out = hidden @ vec.T
        return out if bias is None else out + bias

    def pair_scores(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] against per-row items [..., C] -> [..., C] (each row its own candidates)."""
        vec, bias = self.output_items(items)
        out = (hidden.unsqueeze(-2) * vec).sum(-1)
        return out if bias is None else out + bias

    def clip(self, seq: torch.Tensor) -> torch.Tensor:
        """seq with at most max_len columns (the newest) and without leading all-pad columns (pure padding: a
        shorter batch computes the same states for the real items, in less time)."""
        seq = seq[:, -self.max_len:]
        real = (seq != 0).any(0).nonzero()
        return seq[:, int(real[0]):] if len(real) else seq[:, -1:]


class SASRec(SequentialRecommender):
    def __init__(self, n_items: int, max_len: int = 50, hidden_size: int = 50, num_blocks: int = 2,
                 num_heads: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.n_items, self.max_len, self.hidden_size, self.num_heads = n_items, max_len, hidden_size, num_heads
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden_size)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden_size, num_heads, dim_feedforward=hidden_size, dropout=dropout,
                                       activation="relu", batch_first=True, norm_first=True)
            for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(hidden_size)
        for emb in (self.item_emb, self.pos_emb):  # the official code's Xavier initialisation of the embeddings
            nn.init.xavier_normal_(emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        L = seq.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence of {L} > max_len {self.max_len} items; clip() it first")
        real = seq != 0
        # Positions count back from the newest item (column L-1 is position max_len-1, as in a max_len-wide
        # left-padded row): a clipped batch sees the same positions as a full-width one.
        x = self.item_emb(seq) * math.sqrt(self.hidden_size) + self.pos_emb.weight[self.max_len - L:]
        x = self.emb_dropout(x) * real.unsqueeze(-1)
        idx = torch.arange(L, device=seq.device)
        causal = idx[None, :] > idx[:, None]  # [L, L]: a key after the query
        blocked = causal | (~real[:, None, :] & (idx[None, :] != idx[:, None])[None])  # pad keys, but self
        blocked = blocked.repeat_interleave(self.num_heads, dim=0)  # [B * heads, L, L], batch-major
        for block in self.blocks:
            x = block(x, src_mask=blocked) * real.unsqueeze(-1)
        return self.final_norm(x)

    def output_items(self, items=None):
        return (self.item_emb.weight if items is None else self.item_emb(items)), None


class GRU4Rec(SequentialRecommender):
    def __init__(self, n_items: int, max_len: int = 50, hidden_size: int = 100, num_layers: int = 1,
                 dropout: float = 0.3, dropout_embed: float = 0.0) -> None:
        super().__init__()
        self.n_items, self.max_len, self.hidden_size = n_items, max_len, hidden_size
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.embed_dropout = nn.Dropout(dropout_embed)
        self.gru = nn.GRU(hidden_size, hidden_size, num_layers, batch_first=True)
        self.hidden_dropout = nn.Dropout(dropout)
        self.out_emb = nn.Embedding(n_items + 1, hidden_size)
        self.out_bias = nn.Embedding(n_items + 1, 1)
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.out_emb.weight)
        nn.init.zeros_(self.out_bias.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        B, L = seq.shape
        lengths = (seq != 0).sum(1).clamp(min=1)
        # right-aligned -> left-aligned rows (pack_padded_sequence wants the padding at the end), and back
        idx = torch.arange(L, device=seq.device)
        shift = (L - lengths).unsqueeze(1)
        src = (idx[None, :] + shift).clamp(max=L - 1)
        left = seq.gather(1, src) * (idx[None, :] < lengths[:, None])
        x = self.embed_dropout(self.item_emb(left))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)
        back = (idx[None, :] - shift).clamp(min=0)  # column j of the right-aligned row is column j - shift
        h = out.gather(1, back.unsqueeze(-1).expand(B, L, out.shape[-1])) * (seq != 0).unsqueeze(-1)
        return self.hidden_dropout(h)

    def output_items(self, items=None):
        if items is None:
            return self.out_emb.weight, self.out_bias.weight.squeeze(-1)
        return self.out_emb(items), self.out_bias(items).squeeze(-1)


MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec}


def bce_loss(model: SequentialRecommender, hidden: torch.Tensor, positives: torch.Tensor,
             negatives: torch.Tensor) -> torch.Tensor:
    """SASRec's loss: mean over real positions (positives != 0) of -log sigmoid(s+) - log(1 - sigmoid(s-)), with
    s+ the score of the next item and s- that of the position's sampled negative."""
    real = positives != 0
    h = hidden[real]
    pos = model.pair_scores(h, positives[real].unsqueeze(-1)).squeeze(-1)
    neg = model.pair_scores(h, negatives[real].unsqueeze(-1)).squeeze(-1)
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + \
        F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))


def sampled_softmax_loss(model: SequentialRecommender, hidden: torch.Tensor, positives: torch.Tensor,
                         columns: torch.Tensor) -> torch.Tensor:
    """GRU4Rec's cross-entropy: mean over real positions of -log softmax(scores over `columns`)[next item].
    columns: sorted distinct item ids holding every positive (the batch's targets plus shared sampled negatives,
    or every item), so each other position's target is a negative too, as in GRU4Rec's mini-batch sampling."""
    real = positives != 0
    logits = model.logits(hidden[real], columns)
    labels = torch.searchsorted(columns, positives[real])
    return F.cross_entropy(logits, labels)
