"""Issue 14, damaged artifacts (generated cases): every file of a processed dataset directory and of a training
checkpoint is deleted, truncated and emptied in turn, and every way a dataset can be inconsistent (a column
missing or mistyped, ids outside the catalogue, an empty split, ...) is applied in turn. Each must be refused with
one UserInputError naming the file, split or column (the scripts turn it into one line and exit 2:
tests/test_bad_input.py runs a few of them through the real scripts), never a traceback, never a silent load.
Saved result rows that are damaged are recomputed, not reused and not fatal."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fixtures.ppo_train import build_dataset
from foundation.errors import UserInputError

DAMAGES = ("delete", "truncate", "empty")


def _damage(f: Path, how: str) -> None:
    if how == "delete":
        f.unlink()
    elif how == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        f.write_bytes(b"")


def _fresh_copy(src: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    return dest


def _damaged_copies(src: Path, dest: Path, rels, under: str = "") -> Iterator[tuple[Any, str]]:
    """For every file in rels (relative to src/under) and every damage: a fresh copy of src at dest with that one
    file damaged. Yields (rel, damage)."""
    for rel in rels:
        for how in DAMAGES:
            _damage(_fresh_copy(src, dest) / under / rel, how)
            yield rel, how


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("damaged_ds"), n_users=60, n_items=40, n_subcats=2)


# ------------------------------------------------------------------------------------------ dataset directories
def test_every_file_of_a_dataset_dir_deleted_truncated_or_emptied_is_named(dataset_dir, tmp_path):
    from trainers.data.dataset import load_processed_dataset

    files = sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*") if p.is_file())
    files = [f for f in files if f.name != "stats.json"]  # preprocess.py's report: no consumer needs it
    assert len(files) >= 13
    failures = []
    d = tmp_path / "ds"
    for rel, how in _damaged_copies(dataset_dir, d, files):
        try:
            load_processed_dataset(d)
            failures.append(f"{how} {rel}: loaded")
        except UserInputError as e:
            msg = str(e)
            named = rel.as_posix() in msg or rel.name in msg or f"the {rel.parts[0]} split" in msg
            if "\n" in msg or not named or not msg.startswith(f"--dataset_path {d}"):
                failures.append(f"{how} {rel}: {msg}")
        except Exception as e:  # noqa: BLE001 - the point of the test
            failures.append(f"{how} {rel}: {type(e).__name__}: {e}")
    for split in ("train", "valid", "test", "item_info"):
        shutil.rmtree(_fresh_copy(dataset_dir, d) / split)
        with pytest.raises(UserInputError, match=f"the {split} split folder is missing"):
            load_processed_dataset(d)
    assert not failures, "\n".join(failures)


def _drop(split: str, col: str):
    return lambda dd: dd.__setitem__(split, dd[split].remove_columns([col]))


def _map(split: str, fn):
    return lambda dd: dd.__setitem__(split, dd[split].map(fn))


def _string():
    from datasets import Value

    return Value("string")


def _bad_title(r):
    return {"title": None if r["item_id"] == 3 else r["title"]}


INCONSISTENT = [
    *[(f"no-{c}", _drop("test", c), f"no '{c}' column") for c in
      ("user_id", "item_id", "history_item_id", "history_rating", "history_timestamp", "timestamp", "interaction_id")],
    ("no-title", _drop("item_info", "title"), "no 'title' column"),
    ("target-beyond-catalogue", _map("train", lambda r: {"item_id": 10 ** 6}), "train.item_id holds item id 1000000"),
    ("target-pad", _map("valid", lambda r: {"item_id": 0}), "valid.item_id holds item id 0"),
    ("history-beyond-catalogue", _map("test", lambda r: {"history_item_id": [99999] + r["history_item_id"][1:]}),
     "test.history_item_id holds item id 99999"),
    ("history-lengths", _map("train", lambda r: {"history_rating": r["history_rating"][:-1]}), "different lengths"),
    ("repeated-interaction-id", _map("test", lambda r: {"interaction_id": 7}), "interaction_id repeats"),
    ("item-id-as-text", lambda dd: dd.__setitem__("train", dd["train"].cast_column("item_id", _string())),
     "expected integer"),
    ("null-title", _map("item_info", _bad_title), "without a title (item id 3"),
    ("empty-valid", lambda dd: dd.__setitem__("valid", dd["valid"].select([])), "the valid split holds no"),
    ("empty-train", lambda dd: dd.__setitem__("train", dd["train"].select([])), "the train split holds no"),
]


@pytest.mark.parametrize("name,change,needle", INCONSISTENT, ids=[c[0] for c in INCONSISTENT])
def test_inconsistent_datasets_are_refused_on_load(name, change, needle, dataset_dir, tmp_path):
    from datasets import load_from_disk

    from trainers.data.dataset import load_processed_dataset

    dd = load_from_disk(str(dataset_dir))
    change(dd)
    d = tmp_path / dataset_dir.name
    dd.save_to_disk(str(d))
    with pytest.raises(UserInputError, match=None) as e:
        load_processed_dataset(d, flag="--dataset_dir")
    assert needle in str(e.value) and str(e.value).startswith(f"--dataset_dir {d}") and "\n" not in str(e.value)


def test_intact_and_upstream_layout_datasets_still_load(dataset_dir, tmp_path):
    from datasets import load_from_disk

    from trainers.data.dataset import load_processed_dataset

    ours = load_processed_dataset(dataset_dir)
    dd = load_from_disk(str(dataset_dir))
    n = len(dd["item_info"])
    dd["item_info"] = dd["item_info"].select([*range(1, n), 0]).map(  # upstream: pad row last, may lack a title
        lambda r: {"title": None if r["item_id"] == 0 else r["title"]})
    dd.save_to_disk(str(tmp_path / "up"))
    up = load_processed_dataset(tmp_path / "up")
    assert up.layout == "upstream" and up.titles[1:] == ours.titles[1:]


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def ppo_run(dataset_dir, tmp_path_factory) -> Path:
    """A 2-step train.py run with checkpoints at steps 1 and 2 and final/."""
    from tests.fixtures.assets import build_tiny_qwen
    from trainers.ppo_trainer import parse_config, run_training

    root = tmp_path_factory.mktemp("damaged_ckpt")
    model = build_tiny_qwen(root / "tiny")
    out = root / "run"
    run_training(parse_config(["--dataset_path", str(dataset_dir), "--model_name_or_path", str(model),
                               "--output_dir", str(out), "--device", "cpu", "--no_plot", "--K", "4", "--K_eval", "3",
                               "--batch_size", "2", "--max_len_per_item", "4", "--user_window_size", "3",
                               "--max_steps", "2", "--save_every", "1", "--num_valid_samples", "2"]))
    return out


def test_every_file_of_a_checkpoint_deleted_truncated_or_emptied_is_named(ppo_run, tmp_path, capsys):
    """train.py (resume: every file) and test.py (evaluation: the training state may have been deleted to save
    space) refuse a checkpoint whose files no longer match the manifest its COMPLETE marker holds; 'auto' falls
    back to the newest intact checkpoint with a warning."""
    from foundation.checkpoints import TRAINING_STATE_FILES, resolve_checkpoint
    from models.resolution import judge_dir_files
    from trainers.ppo_trainer import judge_checkpoint_files

    manifest = json.loads((ppo_run / "checkpoint-2" / "COMPLETE").read_text())["files"]
    assert {"model.safetensors", "heads.safetensors", "optimizer.pt", "rng_state_rank0.pt", "chat_template.jinja",
            "tokenizer.json", "args.json"} <= set(manifest)
    failures = []
    run = tmp_path / "run"
    ck = run / "checkpoint-2"
    for rel, how in _damaged_copies(ppo_run, run, manifest, under="checkpoint-2"):
        optional = how == "delete" and any(Path(rel).match(p) for p in TRAINING_STATE_FILES)
        for who, required, training in (("train", judge_checkpoint_files(), True),
                                        ("test", judge_dir_files(), False)):
            try:
                got = resolve_checkpoint(str(ck), run, required, training=training)
                if not (who == "test" and optional and got == ck):
                    failures.append(f"{who}: {how} {rel}: accepted")
            except UserInputError as e:
                if rel not in str(e) or "\n" in str(e):
                    failures.append(f"{who}: {how} {rel}: {e}")
        if resolve_checkpoint("auto", run, judge_checkpoint_files(), training=True) != run / "checkpoint-1":
            failures.append(f"auto: {how} {rel}: did not fall back to checkpoint-1")
    assert not failures, "\n".join(failures)
    assert "skipping incomplete" in capsys.readouterr().err
    # the final model carries the manifest too (test.py --resume_from .../final)
    final = tmp_path / "final"
    shutil.copytree(ppo_run / "final", final)
    _damage(final / "chat_template.jinja", "truncate")
    with pytest.raises(UserInputError, match="chat_template.jinja has"):
        resolve_checkpoint(str(final), tmp_path, judge_dir_files())


def test_manifest_is_written_last_and_old_markers_still_work(tmp_path):
    from foundation.checkpoints import checkpoint_problem, write_checkpoint

    def files(d: Path) -> None:
        (d / "model.safetensors").write_bytes(b"x" * 10)
        (d / "sub").mkdir()
        (d / "sub" / "state.bin").write_bytes(b"y" * 3)
        (d / "README.md").write_text("a model card")

    ck = write_checkpoint(tmp_path, 5, files, {"step": 5}, {"lr": 1}, rank=0, barrier=lambda: None)
    marker = json.loads((ck / "COMPLETE").read_text())
    assert marker["step"] == 5 and marker["files"]["sub/state.bin"] == 3 and "README.md" not in marker["files"]
    assert set(marker["files"]) >= {"model.safetensors", "rng_state_rank0.pt", "trainer_state.json", "args.json"}
    (ck / "README.md").unlink()  # model cards are not part of a checkpoint's contract
    assert checkpoint_problem(ck, training=True) is None
    (ck / "sub" / "state.bin").write_bytes(b"yy")
    assert "sub/state.bin has 2 bytes but was written with 3" in checkpoint_problem(ck)
    (ck / "COMPLETE").write_text("5")  # a checkpoint written before the manifest: nothing to compare with
    assert checkpoint_problem(ck) is None


# ------------------------------------------------------------------------------------------ saved result rows
GOOD = {"interaction_id": 11, "user_id": "u", "target_item_id": 4, "candidates": [3, 4, 5], "scores": [0.1, 0.3, 0.2],
        "ranking": [4, 5, 3], "target_rank": 1}
ROW_DAMAGE = {
    "interaction_id-text": {"interaction_id": "abc"}, "interaction_id-null": {"interaction_id": None},
    "target_rank-text": {"target_rank": "x"}, "target_rank-null": {"target_rank": None},
    "target_rank-0": {"target_rank": 0}, "target_rank-beyond-K": {"target_rank": 99},
    "candidates-null": {"candidates": None}, "candidates-text": {"candidates": "3,4,5"},
    "candidates-without-target": {"candidates": [3, 5, 6]}, "scores-short": {"scores": [0.1]},
    "ranking-null": {"ranking": None}, "ranking-other-items": {"ranking": [4, 5, 9]}, "no-scores": {"scores": ...},
}


@pytest.mark.parametrize("name", sorted(ROW_DAMAGE))
def test_damaged_saved_rows_are_recomputed_not_reused(name, tmp_path, capsys):
    """A killed or hand-edited run can leave rows a rerun cannot use: each is reported and recomputed (failing on it
    would fail again on every rerun; reusing it would put a wrong rank into the metrics)."""
    from trainers.evaluation.results import ResultWriter, partial_path

    path = tmp_path / "results.json"
    bad = {k: v for k, v in {**GOOD, "interaction_id": 12, **ROW_DAMAGE[name]}.items() if v is not ...}
    partial_path(path).write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    w = ResultWriter(path, {"seed": 1})
    assert w.done_ids == {11}
    assert "it will be recomputed" in capsys.readouterr().err
    w.add({**GOOD, "interaction_id": 12})
    assert w.finalize()["metrics"]["n"] == 2


def test_damaged_reference_json_is_one_line(tmp_path):
    from trainers.evaluation.results import load_result_json

    f = tmp_path / "ref.json"
    f.write_text(json.dumps({"meta": {}, "samples": [GOOD, {**GOOD, "candidates": None}]}))
    with pytest.raises(UserInputError, match=r"--reference_json .*ref.json: sample 1: candidates is not a list"):
        load_result_json(f)


def test_a_damaged_metrics_log_is_trimmed_not_fatal(tmp_path, capsys):
    """A resumed run trims metrics.jsonl to its step; a record whose step is not an integer (or a line that is not
    a record) is dropped with a warning instead of a traceback on every rerun."""
    from foundation.files import truncate_jsonl_after

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": "abc"}\n[1, 2]\n{"step": null}\n{"step": 2}\n{"step": 3}\n{"step": 4, "x"')
    truncate_jsonl_after(log, 2)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    assert capsys.readouterr().err.count("warning") == 3


# ------------------------------------------------------------------------------------------ missing tensors (issue 27)
def _save_without(src: Path, dest: Path, drop: str | None = None, add: str | None = None,
                  weights: str = "model.safetensors") -> Path:
    """A copy of the model dir src whose weight file lacks tensor `drop` and/or holds an extra tensor `add`."""
    import torch
    from safetensors.torch import load_file, save_file

    _fresh_copy(src, dest)
    state = load_file(str(src / weights))
    if drop is not None:
        del state[drop]
    if add is not None:
        state[add] = torch.zeros(2, 2)
    save_file(state, str(dest / weights), metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny Qwen2s without tokenizers (only load_causal_lm reads them): tied and untied output embeddings, and a
    LoRA adapter on the tied one."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("tensors")
    out = {}
    for tied in (True, False):
        cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
        out["tied" if tied else "untied"] = root / ("tied" if tied else "untied")
        Qwen2ForCausalLM(cfg).save_pretrained(out["tied" if tied else "untied"])
    lm = Qwen2ForCausalLM.from_pretrained(out["tied"])
    get_peft_model(lm, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
                   ).save_pretrained(root / "adapter")
    out["adapter"] = root / "adapter"
    return out


def _load(path: Path, base: Path | None = None):
    import torch

    from models.abstract_models import load_causal_lm

    return load_causal_lm(path, torch.device("cpu"), torch.float32, "sdpa", base_model=str(base) if base else None)


def test_every_missing_or_foreign_tensor_is_named_never_randomly_initialised(small_models, tmp_path):
    """Each tensor of a model's weight file deleted in turn, and a tensor of another model added: the load is one
    UserInputError naming the tensor and the file (transformers would initialise the missing one at random and
    evaluate it). A tied model legitimately has no lm_head.weight in its file, and an old save's rotary inv_freq
    buffer is no foreign tensor: both load."""
    from safetensors import safe_open

    failures = []
    for kind in ("tied", "untied"):
        src = small_models[kind]
        with safe_open(str(src / "model.safetensors"), "pt") as f:
            names = sorted(f.keys())
        assert ("lm_head.weight" in names) == (kind == "untied")
        cases = [(n, None) for n in names] + [(None, "model.layers.0.mlp.extra_proj.weight")]
        for drop, add in cases:
            d = _save_without(src, tmp_path / "m", drop=drop, add=add)
            try:
                _load(d)
                failures.append(f"{kind}: without {drop} / with {add}: loaded")
            except UserInputError as e:
                msg, name = str(e), drop or add
                if name not in msg or str(d / "model.safetensors") not in msg or "\n" in msg:
                    failures.append(f"{kind}: {name}: {msg}")
    assert not failures, "\n".join(failures)
    _load(_save_without(small_models["tied"], tmp_path / "buffer", add="model.layers.0.self_attn.rotary_emb.inv_freq"))


def test_every_missing_or_foreign_adapter_tensor_is_named(small_models, tmp_path):
    """The same for a LoRA adapter: peft's from_pretrained only warns about a missing adapter tensor (left at its
    random or zero init) and ignores a foreign one."""
    from safetensors import safe_open

    src, base = small_models["adapter"], small_models["tied"]
    _load(src, base)  # intact: loads
    with safe_open(str(src / "adapter_model.safetensors"), "pt") as f:
        names = sorted(f.keys())
    assert len(names) == 4
    foreign = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    failures = []
    for drop, add in [(n, None) for n in names] + [(None, foreign)]:
        d = _save_without(src, tmp_path / "a", drop=drop, add=add, weights="adapter_model.safetensors")
        try:
            _load(d, base)
            failures.append(f"without {drop} / with {add}: loaded")
        except UserInputError as e:
            if (drop or add) not in str(e) or "adapter_model.safetensors" not in str(e):
                failures.append(f"{drop or add}: {e}")
    assert not failures, "\n".join(failures)


def test_every_missing_or_foreign_value_head_tensor_is_named(ppo_run, tmp_path):
    """train.py --resume_from and test.py load the value head from heads.safetensors: a tensor missing from it (or
    a foreign one) is named, not left at its random init."""
    from models.qwen_models import BinaryJudge

    src = ppo_run / "checkpoint-2"
    BinaryJudge.load(str(src), device="cpu", dtype="fp32", attn_implementation="sdpa")
    failures = []
    for drop, add in [(n, None) for n in ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")] + \
            [(None, "net.4.weight")]:
        d = _save_without(src, tmp_path / "ck", drop=drop, add=add, weights="heads.safetensors")
        try:
            BinaryJudge.load(str(d), device="cpu", dtype="fp32", attn_implementation="sdpa", flag="--resume_from")
            failures.append(f"without {drop} / with {add}: loaded")
        except UserInputError as e:
            if (drop or add) not in str(e) or "heads.safetensors" not in str(e) or "--resume_from" not in str(e):
                failures.append(f"{drop or add}: {e}")
    assert not failures, "\n".join(failures)
