"""RecPO's two losses against upstream R2ec's code (YRYangang/RRec at 449a544, trainers/RecPOTrainer.py).

`upstream_batch_forward` below is upstream's `batch_forward` arithmetic, copied with its shapes (advantages
[B,1] unsqueezed again, so the token loss is a [B,B,L] sum and the rec loss a [B,B,1] one), and upstream's
mini-batch slicing and cross-process concatenation (local rows first). Our RecPOTrainer._mini_batch_loss runs
on the same tensors through a stand-in model whose outputs are leaf tensors; the losses and the gradients of
every leaf must agree to 1e-6, mini-batch by mini-batch, for mini-batch = group, mini-batch > group,
mini-batches that straddle groups, G = 1 and one rollout per mini-batch, each on one process and with negatives
gathered from a second process. Then what the
default implies: with one gaussian group per mini-batch the token loss gives the reasoning no gradient, and the
rec loss pulls every rollout of the group to the target; --advantage_broadcast per_row does neither. And by hand:
the reward (masking, ties, cut-off), both losses in both forms, the rollout settings (greedy at G = 1) and the
gathered in-batch negatives lined up across processes.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from compare_model.train_rrec import parse_config
from models.rrec_models import RRecSettings
from trainers.recpo_trainer import (RecPORollout, RecPOTrainer, mini_batches, rec_loss, recpo_reward, relabel_mask,
                                    token_loss)
from trainers.rl.advantages import group_advantages

EPS_LOW, EPS_HIGH = 0.2, 0.28
USER_ID0, ITEM_ID0 = 1000, 5000  # the first token of a stand-in sequence says which leaf tensor row it reads
# cosine as upstream, over a milder temperature than its 0.02, so random vectors do not saturate the softmax
SIMILARITY = RRecSettings(similarity_temperature=0.5).similarity


# ----------------------------------------------------------------------------- upstream's arithmetic
def upstream_batch_forward(per_token_logps, loss_mask, similarity, advantages, relabel_mask, in_batch_labels,
                           num_processes=1, macro_batch_size=None, gathered_advantages=None, gathered_relabel=None):
    """Upstream's RecPOTrainer.batch_forward after the model forward, line by line with its shapes (the
    forward's outputs are the inputs). similarity: [rows x processes, items x processes], this process's rows
    and items first (compute_sim_train). gathered_*: the other processes' advantages [B] and relabel masks [B]
    in process order (its _gather_and_cat puts this process's first). Returns (item_loss, tokens_loss)."""
    advantages = advantages.unsqueeze(-1)  # (B, 1)
    _batch_size = advantages.shape[0]
    coef_1 = torch.exp(per_token_logps - per_token_logps.detach())
    coef_2 = torch.clamp(coef_1, 1 - EPS_LOW, 1 + EPS_HIGH)
    per_token_loss1 = coef_1 * advantages.unsqueeze(-1)
    per_token_loss2 = coef_2 * advantages.unsqueeze(-1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    labels = in_batch_labels
    if num_processes > 1:
        labels = torch.cat([labels + i * macro_batch_size for i in range(num_processes)], dim=0)
        _gathered_advantages = torch.cat([advantages, *[a.unsqueeze(-1) for a in gathered_advantages]], dim=0)
        relabel_mask = torch.cat([relabel_mask, *gathered_relabel], dim=0)
    else:
        _gathered_advantages = advantages
    _gathered_advantages = _gathered_advantages * relabel_mask.float().unsqueeze(-1)
    assert _gathered_advantages.shape[0] == labels.shape[0] and _gathered_advantages.shape[1] == 1
    similarity = similarity.softmax(dim=-1)
    probs = similarity.gather(dim=-1, index=labels.unsqueeze(-1))
    coef_1 = probs / probs.detach()
    coef_2 = torch.clamp(coef_1, 1 - EPS_LOW, 1 + EPS_HIGH)
    item_loss1 = coef_1 * _gathered_advantages.unsqueeze(-1)
    item_loss2 = coef_2 * _gathered_advantages.unsqueeze(-1)
    item_loss = -torch.min(item_loss1, item_loss2)
    item_loss = (item_loss).sum(dim=-1).mean()
    tokens_loss = (per_token_loss * loss_mask).sum()
    tokens_loss /= loss_mask.sum()
    tokens_loss /= _batch_size
    return item_loss, tokens_loss


def upstream_mini_batches(macro_batch_size, mini_batch_size, per_device_train_batch_size, num_return_sequences):
    """GenRecTrainer.__init__ then RecPOTrainer.__init__ cap the mini-batch; _rec_mini_batch_iterator slices."""
    mini = min(mini_batch_size, per_device_train_batch_size)
    mini = min(per_device_train_batch_size * num_return_sequences, mini)
    return [list(range(i, min(i + mini, macro_batch_size))) for i in range(0, macro_batch_size, mini)]


# ----------------------------------------------------------------------------- one process's data
def make_process(seed: int, B: int, G: int, H: int = 6):
    """Leaf tensors standing for one process's forward outputs: token log-probs [B*G, L] (completion tokens at
    positions start..length-1 of each rollout, lengths differing), user vectors [B*G, H], target item vectors
    [B, H]; gaussian advantages of random rewards per user and the relabel mask of the top G/2."""
    g = torch.Generator().manual_seed(seed)
    R = B * G
    lengths = [5 + int(torch.randint(0, 6, (1,), generator=g)) for _ in range(R)]
    starts = [2 + int(torch.randint(0, 2, (1,), generator=g)) for _ in range(R)]
    L = max(lengths)
    p = SimpleNamespace(
        B=B, G=G, lengths=lengths, starts=starts,
        token_logps=(-torch.rand(R, L, generator=g) * 3).requires_grad_(),
        users=torch.randn(R, H, generator=g).requires_grad_(),
        items=torch.randn(B, H, generator=g).requires_grad_(),
        rewards=torch.rand(B, G, generator=g))
    p.adv = group_advantages(p.rewards, "gaussian").reshape(-1)
    # top 2 of 4 as upstream's launch script; top 1 of 2 (top 2 of 2 would weight a whole group, summing to 0)
    p.relabel = relabel_mask(p.adv.view(B, G), max(1, G // 2)).reshape(-1)
    p.loss_mask = torch.zeros(R, L, dtype=torch.bool)
    for r in range(R):
        p.loss_mask[r, starts[r]:lengths[r]] = True
    p.seqs = [[USER_ID0 + r] + [7] * (lengths[r] - 1) for r in range(R)]
    p.item_seqs = [[ITEM_ID0 + b, 7] for b in range(B)]
    p.targets = [100 + 3 * b for b in range(B)]
    return p


def rollout_of(proc) -> RecPORollout:
    """A process's tensors as the RecPORollout our update reads."""
    B, G = proc.B, proc.G
    return RecPORollout(examples=[{}] * B, seqs=proc.seqs, starts=proc.starts, generated_tokens=[0] * (B * G),
                        targets=proc.targets, item_seqs=proc.item_seqs, rewards=proc.rewards.reshape(-1),
                        reward_parts={}, advantages=proc.adv.view(B, G), relabel=proc.relabel.view(B, G))


class StandInModel:
    """model(ids, mask, lp_mask) -> (vectors, flat token log-probs) read from a process's leaf tensors."""

    def __init__(self, proc):
        self.p = proc

    def __call__(self, ids, mask, lp_mask):
        first = ids[:, 0].tolist()
        emb = torch.stack([self.p.items[k - ITEM_ID0] if k >= ITEM_ID0 else self.p.users[k - USER_ID0]
                           for k in first])
        logps = torch.cat([self.p.token_logps[k - USER_ID0, :lp_mask.shape[1]][lp_mask[i]] for i, k in enumerate(first)
                           if k < ITEM_ID0])
        return emb, logps


class ProcessZero:
    """The accelerator of process 1 of 2: gather() returns [process 0's tensor, ours] (rank order), recognising
    which tensor is gathered by its value, so the test does not depend on the order of the gathers."""

    device = torch.device("cpu")

    def __init__(self, ours, theirs):
        self.ours, self.theirs, self.rows = ours, theirs, []

    def gather(self, t):
        o, th, rows, B, G = self.ours, self.theirs, torch.tensor(self.rows), self.ours.B, self.ours.G
        pairs = [(o.users[rows], th.users[rows]), (o.items, th.items),
                 (rows // G + B, rows // G),  # labels: ours carry the offset of rank 1
                 ((o.adv * o.relabel)[rows], (th.adv * th.relabel)[rows]),
                 (torch.tensor(o.targets), torch.tensor(th.targets))]
        for mine, other in pairs:
            if t.shape == mine.shape and t.dtype == mine.dtype and torch.equal(t.detach(), mine.detach()):
                return torch.cat([other.detach(), t])
        raise AssertionError(f"unexpected gather of {t}")

    def backward(self, loss):
        loss.backward()


def ours_step(proc, mini_batch_size, broadcast, other=None):
    """Our mini-batch loop (RecPOTrainer's chunks and _mini_batch_loss, gradients accumulated as one backward
    per mini-batch), on one process or as process 1 of 2. Returns the (rec, token) losses of each mini-batch,
    in one flat list."""
    cfg = parse_config(["--group_size", str(proc.G), "--train_batch_size", str(proc.B), "--mini_batch_size",
                        str(mini_batch_size), "--advantage_broadcast", broadcast])
    cfg.validate()
    acc = ProcessZero(proc, other) if other is not None else SimpleNamespace(device=torch.device("cpu"),
                                                                             backward=lambda loss: loss.backward())
    fake = SimpleNamespace(cfg=cfg, acc=acc, world=2 if other is not None else 1, rank=1 if other is not None else 0,
                           model=StandInModel(proc), item_table=torch.zeros(200, proc.users.shape[1]),
                           rrec=SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0), similarity=SIMILARITY))
    fake._across_processes = lambda t, keep_local=True: RecPOTrainer._across_processes(fake, t, keep_local)
    fake._losses = lambda *a: RecPOTrainer._losses(fake, *a)
    losses = []
    for ci, rows in enumerate(mini_batches(proc.B * proc.G, cfg.mini_batch_size, cfg.train_batch_size)):
        acc.rows = rows
        out = RecPOTrainer._mini_batch_loss(fake, ci, rows, rollout_of(proc), {}, {})
        losses += [float(out["rec_loss"]), float(out["token_loss"])]
    return losses


def upstream_step(proc, mini_batch_size, other=None):
    """Upstream's training_step loop over its mini-batches (one backward each) on the same tensors."""
    B, G = proc.B, proc.G
    in_batch_labels = torch.arange(B).repeat_interleave(G)
    losses = []
    for rows in upstream_mini_batches(B * G, mini_batch_size, B, G):
        users, items = proc.users[rows], proc.items
        kw = {}
        if other is not None:  # compute_sim_train: this process's rows and items first, the others' detached
            users = torch.cat([users, other.users[rows].detach()])
            items = torch.cat([items, other.items.detach()])
            kw = dict(num_processes=2, macro_batch_size=B, gathered_advantages=[other.adv[rows]],
                      gathered_relabel=[other.relabel[rows]])
        item_loss, tokens_loss = upstream_batch_forward(
            proc.token_logps[rows], proc.loss_mask[rows], SIMILARITY(users, items), proc.adv[rows],
            proc.relabel[rows], in_batch_labels[rows], **kw)
        (item_loss + tokens_loss).backward()
        losses += [float(item_loss.detach()), float(tokens_loss.detach())]
    return losses


def _grads(proc):
    out = [t.grad.clone() for t in (proc.token_logps, proc.users, proc.items)]
    for t in (proc.token_logps, proc.users, proc.items):
        t.grad = None
    return out


# ----------------------------------------------------------------------------- the golden comparison
CASES = {  # name: (B users per process, G, --mini_batch_size)
    "mini-batch = group (upstream's default)": (4, 4, 8),
    "mini-batch > group": (4, 2, 8),
    "mini-batches straddling groups": (3, 2, 8),
    "G = 1": (4, 1, 8),
    "one row per mini-batch": (2, 2, 1),
}


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "negatives gathered from a second process"])
@pytest.mark.parametrize("case", list(CASES))
def test_default_losses_and_gradients_equal_upstreams_batch_forward(case, processes):
    B, G, mini = CASES[case]
    proc = make_process(1, B, G)
    other = make_process(2, B, G) if processes == 2 else None
    assert mini_batches(B * G, mini, B) == upstream_mini_batches(B * G, mini, B, G)
    ours = ours_step(proc, mini, "upstream", other)
    ours_grads = _grads(proc)
    theirs = upstream_step(proc, mini, other)
    theirs_grads = _grads(proc)
    assert ours == pytest.approx(theirs, abs=1e-6)
    for name, a, b in zip(("token log-probs", "user vectors", "item vectors"), ours_grads, theirs_grads):
        if name != "token log-probs":  # (those are ~0 when every mini-batch is whole gaussian groups)
            assert b.abs().max() > 1e-4, name  # something to compare
        assert (a - b).abs().max() <= 1e-6, f"{name}: {(a - b).abs().max()}"
    # the paper's per-row form gives the tokens another gradient, unless every mini-batch is one rollout
    ours_step(proc, mini, "per_row", other)
    per_row_grads = _grads(proc)
    differs = (per_row_grads[0] - theirs_grads[0]).abs().max() > 1e-4
    assert differs == (case != "one row per mini-batch"), case


# ----------------------------------------------------------------------------- what the default implies
def test_one_gaussian_group_per_mini_batch_gives_the_reasoning_no_gradient_upstream():
    """Upstream's default (4 users per GPU, G = 4, mini-batch min(8, 4) = one user's group): the group's gaussian
    advantages sum to 0, so under the broadcast every token's gradient is ~0; per_row weights each rollout's
    tokens by its own advantage. The rec loss (top-2 relabelled) pulls every rollout of the group toward the
    target under the broadcast, only the two relabelled ones per row."""
    g = torch.Generator().manual_seed(0)
    G, n_tok = 4, torch.tensor([7, 3, 5, 6])
    adv = group_advantages(torch.rand(1, G, generator=g), "gaussian").reshape(-1)
    logps = (-torch.rand(int(n_tok.sum()), generator=g)).requires_grad_()
    per_row_max = {}
    for mode in ("upstream", "per_row"):
        loss, _ = token_loss(logps, logps.detach(), adv, n_tok, EPS_LOW, EPS_HIGH, mode)
        (grad,) = torch.autograd.grad(loss, logps)
        per_row_max[mode] = [float(x.abs().max()) for x in grad.split(n_tok.tolist())]
    assert max(per_row_max["upstream"]) < 1e-8
    assert min(per_row_max["per_row"]) > 1e-3
    # rec loss: 4 rollouts of one user over 4 in-batch targets (its own is column 0)
    scores = torch.randn(G, 4, generator=g).requires_grad_()
    labels = torch.zeros(G, dtype=torch.long)
    relabelled = relabel_mask(adv.view(1, G), 2).reshape(-1)
    weights = adv * relabelled
    pulled = {}
    for mode in ("upstream", "per_row"):
        loss, _, _ = rec_loss(scores, labels, weights, None, EPS_LOW, EPS_HIGH, mode)
        (grad,) = torch.autograd.grad(loss, scores)
        pulled[mode] = (grad[:, 0] < -1e-6).tolist()  # descending the loss raises the target's score
    assert pulled["upstream"] == [True] * G
    assert pulled["per_row"] == [bool(w > 0) for w in weights]
    assert sum(pulled["per_row"]) < G


def test_advantage_broadcast_flag_is_checked():
    from foundation.errors import UserInputError

    assert parse_config([]).advantage_broadcast == "upstream"
    cfg = parse_config([])
    cfg.advantage_broadcast = "rows"
    with pytest.raises(UserInputError, match="--advantage_broadcast"):
        cfg.validate()
    with pytest.raises(ValueError):
        token_loss(torch.zeros(2), torch.zeros(2), torch.ones(1), torch.tensor([2]), EPS_LOW, EPS_HIGH, "rows")


# ----------------------------------------------------------------------------- reward, losses and the step by hand
def test_reward_hand_computed_with_masking_ties_and_cutoff():
    from trainers.evaluation.rrec import masked_scores

    scores = torch.tensor([[9.0, 3.0, 5.0, 1.0, 2.0],    # column 0 = pad: never ranked
                           [0.0, 2.0, 2.0, 2.0, 7.0],    # a three-way tie
                           [0.0, 1.0, 2.0, 3.0, 4.0]])   # target 3 is itself a history item
    hist = [[2], [4], [2, 3]]
    targets = torch.tensor([1, 3, 3])
    masked = masked_scores(scores, hist)
    r, parts = recpo_reward(masked, targets, ndcg_k=1000, softmax_weight=0.05)
    p0 = math.exp(3) / (math.exp(3) + math.exp(1) + math.exp(2))  # item 2 (history) and the pad are out
    assert parts["rank"][:2].tolist() == [1.0, 3.0] and math.isnan(parts["rank"][2].item())
    assert r.tolist() == pytest.approx([0.95 + 0.05 * p0, 0.95 * 0.5 + 0.05 / 3, 0.0], rel=1e-6)
    # unmasked, item 2 would outrank the target
    r_unmasked, parts_unmasked = recpo_reward(masked_scores(scores, [[], [], []]), targets, 1000, 0.05)
    assert parts_unmasked["rank"][0].item() == 2.0 and r_unmasked[0] < r[0]
    # rank 3 is past k = 2: only the softmax part is left
    r2, _ = recpo_reward(masked, targets, ndcg_k=2, softmax_weight=0.05)
    assert r2[1].item() == pytest.approx(0.05 / 3, rel=1e-6)
    # --rank_repeat_targets keeps a repeat-purchase target rankable (upstream masks it, in the reward and in
    # evaluation: rank None, a miss)
    from trainers.evaluation.rrec import catalogue_ranks

    assert catalogue_ranks(masked_scores(scores, hist, keep=[1, 3, 3]), [1, 3, 3]) == [1, 3, 2]
    assert catalogue_ranks(masked, [1, 3, 3]) == [1, 3, None]


def test_token_loss_hand_computed():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_()  # ratios 1.5, 1.5, 0.5, 0.5
    adv, n_tok = torch.tensor([1.0, -1.0]), torch.tensor([1, 3])  # row 0: token 0; row 1: tokens 1-3
    # per_row: token t of row j weighted by A_j: -min(rA, clip(r)A) = -1.28, 1.5, 0.8, 0.8; / 4 tokens / 2 rows
    loss, frac = token_loss(new, old, adv, n_tok, 0.2, 0.28, "per_row")
    assert loss.item() == pytest.approx((-1.28 + 1.5 + 0.8 + 0.8) / 4 / 2, rel=1e-5)
    assert frac.item() == pytest.approx(3 / 4)  # tokens 0, 2, 3 take the clipped term
    (grad,) = torch.autograd.grad(loss, new)
    assert grad.tolist() == pytest.approx([0.0, 1.5 / 8, 0.0, 0.0], abs=1e-6)  # d(-rA)/dlogp = -rA if unclipped
    # upstream: every token weighted by both advantages and summed ([B,B,L]), / 4 tokens / 2 rows
    loss, frac = token_loss(new, old, adv, n_tok, 0.2, 0.28, "upstream")
    per_adv = [[-1.28, -1.28, -0.5, -0.5], [1.5, 1.5, 0.8, 0.8]]  # -min(rA, clip(r)A) with A = 1, then A = -1
    assert loss.item() == pytest.approx(sum(map(sum, per_adv)) / 4 / 2, rel=1e-5)
    assert frac.item() == pytest.approx(4 / 8)  # A = 1: tokens 0-1 clipped; A = -1: tokens 2-3
    (grad,) = torch.autograd.grad(loss, new)
    assert grad.tolist() == pytest.approx([1.5 / 8, 1.5 / 8, -0.5 / 8, -0.5 / 8], abs=1e-6)


def test_rec_loss_hand_computed():
    scores = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    weights = torch.tensor([1.5, 0.0, -0.5])  # advantage x relabel mask: row 1 is not relabelled
    loss, frac, logp = rec_loss(scores, labels, weights, None, 0.2, 0.28, "per_row")
    assert loss.item() == pytest.approx(-(1.5 - 0.5) / 3)  # ratio 1: -mean(weight), rows of weight 0 included
    assert frac.item() == 0.0
    loss.backward()
    p0 = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    g0 = -(1.5 / 3) * (torch.tensor([1.0, 0.0]) - p0)
    assert scores.grad[0].tolist() == pytest.approx(g0.tolist(), abs=1e-6)
    assert scores.grad[1].tolist() == [0.0, 0.0]
    assert scores.grad[2].tolist() == pytest.approx([0.5 / 3 * 0.5, -0.5 / 3 * 0.5], abs=1e-6)
    # a later epoch: row 0's ratio 1.5 is above 1 + 0.28 with a positive weight -> clipped, no gradient
    s2 = scores.detach().clone().requires_grad_()
    old = logp - torch.tensor([math.log(1.5), 0.0, 0.0])
    loss2, frac2, _ = rec_loss(s2, labels, weights, old, 0.2, 0.28, "per_row")
    assert loss2.item() == pytest.approx(-(1.28 * 1.5 - 0.5) / 3, rel=1e-5) and frac2.item() == pytest.approx(1 / 3)
    loss2.backward()
    assert s2.grad[0].tolist() == [0.0, 0.0]
    # upstream: every row weighted by every row's weight ([N,N,1]): at ratio 1 each row by mean(weight) = 1/3
    s3 = scores.detach().clone().requires_grad_()
    loss3, _, _ = rec_loss(s3, labels, weights, None, 0.2, 0.28, "upstream")
    assert loss3.item() == pytest.approx(-(1.5 - 0.5) / 3)  # the same value at ratio 1 ...
    loss3.backward()
    p1, p2 = torch.softmax(torch.tensor([0.0, 1.0]), 0), torch.softmax(torch.tensor([1.0, 1.0]), 0)
    expected = [-(1 / 3) / 3 * (torch.tensor(onehot) - p) for onehot, p in
                (([1.0, 0.0], p0), ([0.0, 1.0], p1), ([1.0, 0.0], p2))]
    for row, g in enumerate(expected):  # ... another gradient: row 1 (not relabelled) is pulled to its target too
        assert s3.grad[row].tolist() == pytest.approx(g.tolist(), abs=1e-6)


def test_rollout_settings_and_greedy_single_rollout():
    """Rollouts sample with upstream's settings; with G = 1 they are greedy (upstream switches sampling off)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from compare_model.train_rrec import parse_config
    from trainers.recpo_trainer import RecPOTrainer

    calls = []

    class FakeModel:
        settings = SimpleNamespace(max_new_tokens=640)

        def generate_reasoning(self, prompts, max_new_tokens, **kw):
            calls.append((len(prompts), max_new_tokens, kw))
            n = len(prompts) * kw["num_return_sequences"]
            return [f"r{i}" for i in range(n)], [1] * n

    class FakePrompter:
        def user_ids(self, ex):
            return [1, 2]

        def user_sequence_ids(self, ex, text, prompt):
            return [1, 2, ex["i"], int(text[1:])], 2

        def stop_token_ids(self):
            return [0]

    for G in (4, 1):
        fake = SimpleNamespace(cfg=parse_config(["--group_size", str(G)]), rrec=FakeModel(),
                               prompter=FakePrompter(), acc=SimpleNamespace(autocast=nullcontext), rank=0)
        seqs, starts, _ = RecPOTrainer._rollouts(fake, 1, [{"i": 10}, {"i": 11}])
        assert [s[2] for s in seqs] == [10] * G + [11] * G and starts == [2] * 2 * G  # G consecutive per user
    (n4, t4, kw4), (n1, t1, kw1) = calls
    assert (n4, t4, n1, t1) == (2, 640, 2, 640)
    assert (kw4["do_sample"], kw4["temperature"], kw4["top_k"], kw4["top_p"], kw4["num_return_sequences"]) == \
        (True, 2.0, 50, 1.0, 4)
    assert kw1["do_sample"] is False and kw1["num_return_sequences"] == 1


def test_gathered_negatives_line_up_users_with_their_targets(monkeypatch):
    """The mini-batch step on process 1 of 2 (a fake accelerator stands in for process 0): users and targets of both
    processes are stacked in rank order, process 1's rollouts keep their gradient, each row's label is its own
    target's column (duplicates included), and every gathered target's row of the item table gets its vector."""
    from types import SimpleNamespace

    import trainers.recpo_trainer as recpo
    from compare_model.train_rrec import parse_config
    from models.rrec_models import RRecSettings

    B, G = 2, 2
    scale = torch.nn.Parameter(torch.ones(()))

    def model(ids, mask, lp_mask):  # the vector of a sequence: its first two token ids (x a trainable scale)
        return ids[:, :2].float() * scale, (scale * 0.0).expand(int(lp_mask[:, 1:].sum())) - 1.0

    # what process 0 contributes to each gather, in the step's order: user vectors, item vectors, labels (its
    # labels lack our offset B), advantage weights, then the item-table update's vectors and target ids
    theirs = iter([lambda t: t + 100.0, lambda t: t + 100.0, lambda t: t - B, lambda t: t + 100.0,
                   lambda t: t + 100.0, lambda t: t + 50])

    class ProcessZero:
        device = torch.device("cpu")

        def gather(self, t):
            return torch.cat([next(theirs)(t), t])

        def backward(self, loss):
            loss.backward()

    rows = [2, 3]  # the second mini-batch: both rollouts of user 1
    cfg = parse_config(["--group_size", str(G), "--train_batch_size", str(B)])
    fake = SimpleNamespace(cfg=cfg, acc=ProcessZero(), world=2, rank=1, model=model, item_table=torch.zeros(80, 2),
                           rrec=SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0),
                                                similarity=RRecSettings(similarity_normalization=False,
                                                                        similarity_temperature=1.0).similarity))
    fake._across_processes = lambda t, keep_local=True: recpo.RecPOTrainer._across_processes(fake, t, keep_local)
    fake._losses = lambda *a: recpo.RecPOTrainer._losses(fake, *a)
    seen = {}

    def recording_rec_loss(scores, labels, weights, old, *rest):
        seen.update(scores=scores, labels=labels.tolist(), weights=weights.tolist())
        return rec_loss(scores, labels, weights, old, *rest)

    monkeypatch.setattr(recpo, "rec_loss", recording_rec_loss)
    seqs = [[1, 2, 9], [1, 2, 8], [3, 4, 9], [3, 4, 7]]  # user 0's two rollouts, user 1's two
    item_seqs = [[5, 6], [5, 6]]  # both users bought item 12: the same prompt twice
    # rec weights (advantage x relabel mask) 0, 0, 1.5, 0: only user 1's first rollout is relabelled
    rollout = recpo.RecPORollout(examples=[{}, {}], seqs=seqs, starts=[2] * 4, generated_tokens=[1] * 4,
                                 targets=[12, 12], item_seqs=item_seqs, rewards=torch.zeros(4), reward_parts={},
                                 advantages=torch.tensor([[1.0, 1.0], [1.5, 1.0]]),
                                 relabel=torch.tensor([[False, False], [True, False]]))
    assert rollout.rec_weights.tolist() == [0.0, 0.0, 1.5, 0.0]
    recpo.RecPOTrainer._mini_batch_loss(fake, 1, rows, rollout, {}, {})
    s = seen["scores"]
    assert s.shape == (4, 4)  # (2 processes x 2 rollouts) x (2 processes x 2 targets)
    assert seen["labels"] == [1, 1, 3, 3]  # process 0's user 1 -> its column 1; ours -> column B + 1 = 3
    assert seen["weights"] == [101.5, 100.0, 1.5, 0.0]  # process 0's block first (the fake adds 100)
    assert s[2, 2].item() == s[2, 3].item() == 3 * 5 + 4 * 6  # our user 1 against both copies of item 12
    assert s[0, 0].item() == 103 * 105 + 104 * 106  # process 0's rows and columns are its (detached) vectors
    assert scale.grad is not None and scale.grad.abs().item() > 0  # our block keeps the graph
    assert fake.item_table[12].tolist() == [5.0, 6.0] and fake.item_table[62].tolist() == [105.0, 106.0]
