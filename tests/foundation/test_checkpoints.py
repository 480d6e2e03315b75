"""foundation/checkpoints.py: optimiser state read back from a checkpoint fits the optimiser of the resumed run."""
from __future__ import annotations

import torch


def test_optimizer_state_follows_param_groups_by_name(tmp_path):
    """A checkpoint of a run with a critic resumed without one (and back): the actor's Adam state is kept, the
    critic's dropped (or started afresh), so the optimiser loads."""
    from foundation.checkpoints import check_optimizer_state_fits, select_param_groups

    actor, critic = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    both = torch.optim.AdamW([{"params": list(actor.parameters()), "name": "actor"},
                              {"params": list(critic.parameters()), "name": "critic"}])
    (actor(torch.ones(1, 3)).sum() + critic(torch.ones(1, 2)).sum()).backward()
    both.step()
    saved = both.state_dict()
    only_actor = torch.optim.AdamW([{"params": list(actor.parameters()), "name": "actor"}])
    state = select_param_groups(saved, only_actor, tmp_path)
    check_optimizer_state_fits(state, only_actor, tmp_path)
    only_actor.load_state_dict(state)
    torch.testing.assert_close(only_actor.state[actor.weight]["exp_avg"], both.state[actor.weight]["exp_avg"])
    # and back: the critic group starts without state
    again = torch.optim.AdamW([{"params": list(actor.parameters()), "name": "actor"},
                               {"params": list(critic.parameters()), "name": "critic"}])
    again.load_state_dict(select_param_groups(only_actor.state_dict(), again, tmp_path))
    assert critic.weight not in again.state or not again.state[critic.weight]
    torch.testing.assert_close(again.state[actor.weight]["exp_avg"], both.state[actor.weight]["exp_avg"])


def test_run_files_are_what_the_output_dir_check_refuses_on(tmp_path):
    """--overwrite_output_dir removes every entry the output-dir check counts as a training run's (trackers
    included: a new run's TensorBoard curves must not join the old run's), plus the run's own extra files; other
    scripts' outputs sharing the directory stay."""
    from foundation.checkpoints import run_files

    run_dirs = ["checkpoint-2", ".tmp-checkpoint-4", "final", "ourrec_ppo", "wandb"]
    run_logs = ["metrics.jsonl", "trainer_state.json", "param_checksum_rank0.txt", "args.json", "training.png"]
    for name in run_dirs + ["notes"]:
        (tmp_path / name).mkdir()
    for name in run_logs + ["results.json"]:
        (tmp_path / name).write_text("x")
    elsewhere = tmp_path.parent / f"{tmp_path.name}_tokens.jsonl"  # --token_log_path outside the output dir
    elsewhere.write_text("x")
    assert {p.name for p in run_files(tmp_path)} == set(run_dirs + run_logs)
    assert elsewhere in run_files(tmp_path, [elsewhere])
