"""Shared logic of the SFT pipeline (docs/sft.md).

prompt sampling      sample_sft_prompts: (user, candidate, Yes/No label) rows rendered by BinaryPrompter
answer parsing       parse_yes_no: the final Yes/No of a model/API response (one parser for every tool)
LLaMA-Factory data   filter_sft_rows + to_alpaca / to_sharegpt, and dataset_info() (sft_train/dataset_info.json):
                     records and the registration come from the same column definitions
SFT training data    encode_sft_example / SFTDataset / SFTCollator: chat-template prompt, loss on response only
accuracy             accuracy_report: accuracy, precision/recall of Yes, confusion matrix of a response file
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from prompters.answer_parsing import ANSWER_TAG_RE, parse_yes_no, strip_think
from prompters.rendering import generation_prompt
from trainers.data.candidates import sample_candidates
from foundation.errors import UserInputError
from foundation.files import MAX_JSON_BYTES, check_output_path, loads_json, read_json
from foundation.seeding import numpy_rng

LABELS = ("Yes", "No")
FORMATS = ("alpaca", "sharegpt")
IGNORE_INDEX = -100

# The one definition of our LLaMA-Factory data: LLaMA-Factory's column names -> the fields of our records.
# Every record carries every column (system is "" when no system prompt is given: LLaMA-Factory reads a mapped
# column unconditionally), and dataset_info() registers exactly these, so the two cannot disagree.
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
DATASET_INFO_FILE = "dataset_info.json"  # the registry file LLaMA-Factory reads in its dataset_dir

# Drop reasons reported by process_sft_data.py.
DROP_REASONS = ("api_error", "empty", "unparseable", "wrong")



def canonical_output(response: str, label: str) -> str:
    """The response with <think> blocks removed and, if it lacks an "Answer:" tag, "Answer: {label}" appended,
    so the SFT'd model ends in the tag the judge reads its score after (prompters.prompts.ANSWER_PREFIX)."""
    from prompters.prompts import ANSWER_PREFIX

    body = strip_think(response).strip()
    if ANSWER_TAG_RE.search(body):
        return body
    return f"{body}\n{ANSWER_PREFIX} {label}".strip() if body.rstrip(".!").lower() not in ("yes", "no") \
        else f"{ANSWER_PREFIX} {label}"


# ---- prompt sampling ---------------------------------------------------------------------------
def sample_sft_prompts(dataset, prompter, split: str, num_samples: int, match_ratio: float, seed: int = 42,
                       K: int = 20) -> list[dict]:
    """num_samples (user, candidate, label) prompt rows from one split.

    Examples are drawn without replacement in a seeded order (cycling through fresh permutations when
    num_samples exceeds the split). Each row is a positive (the true next item, label "Yes") with probability
    match_ratio, else a negative (label "No"): one non-target item of the K candidates that
    trainers.candidates.sample_candidates draws for this interaction, picked by a generator seeded by
    (seed, interaction id), so the negatives look like the evaluation's negatives.
    """
    if num_samples < 1:
        raise UserInputError(f"--num_samples {num_samples}: must be >= 1")
    if not 0.0 <= match_ratio <= 1.0:
        raise UserInputError(f"--match_ratio {match_ratio}: must be in [0, 1]")
    if K < 2:
        raise UserInputError(f"--K {K}: must be >= 2")
    ds = dataset.split(split)
    if len(ds) == 0:
        raise UserInputError(f"--split {split}: the split is empty")
    rng = numpy_rng(seed)
    order: list[int] = []
    while len(order) < num_samples:
        order.extend(int(i) for i in rng.permutation(len(ds)))
    order = order[:num_samples]
    positive = rng.random(num_samples) < match_ratio
    uniq = sorted(set(order))
    rows_by_idx = dict(zip(uniq, ds.select(uniq).to_list()))
    out: list[dict] = []
    for n, (idx, pos) in enumerate(zip(order, positive)):
        ex = rows_by_idx[idx]
        iid, target = int(ex["interaction_id"]), int(ex["item_id"])
        if pos:
            item = target
        else:
            cands = sample_candidates(target, ex["history_item_id"], dataset.n_items, K, seed, iid)
            negs = [c for c in cands if c != target]
            item = negs[int(numpy_rng(seed, iid, n).integers(len(negs)))]
        user_msg = prompter.user_message(ex, item)
        out.append({
            "id": n, "interaction_id": iid, "user_id": ex["user_id"], "item_id": item, "target_item_id": target,
            "label": LABELS[0] if pos else LABELS[1], "prompt": user_msg,
            "messages": [{"role": "user", "content": user_msg}],
            "text": prompter.render_text(ex, item),
        })
    return out


# ---- filtering and LLaMA-Factory formatting ----------------------------------------------------
def classify_response(row: dict) -> tuple[str, str | None]:
    """('kept', answer) or (drop reason, answer) for one API response row."""
    if row.get("error"):
        return "api_error", None
    resp = row.get("response")
    if not isinstance(resp, str) or not resp.strip():
        return "empty", None
    ans = parse_yes_no(resp)
    if ans is None:
        return "unparseable", None
    label = str(row.get("label", "")).strip().capitalize()
    if label not in LABELS:
        raise UserInputError(f"row id {row.get('id')}: label {row.get('label')!r} is not Yes/No")
    return ("kept" if ans == label else "wrong"), ans


def response_output(row: dict, keep_reasoning: bool = False, canonical: bool = False) -> str:
    """The assistant text to train on: the response (think blocks removed), optionally preceded by the
    API's reasoning_content in <think></think> (DeepSeek-R1 style), optionally ending in "Answer: {label}"."""
    label = str(row["label"]).strip().capitalize()
    text = canonical_output(row["response"], label) if canonical else strip_think(row["response"]).strip()
    if keep_reasoning:
        reasoning = (row.get("reasoning_content") or "").strip()
        if not reasoning:  # reasoning inline in the response
            m = re.search(r"<think>(.*?)</think>", row["response"], re.S | re.I)
            reasoning = m.group(1).strip() if m else ""
        if reasoning:
            text = f"<think>\n{reasoning}\n</think>\n\n{text}"
    return text


def to_alpaca(prompt: str, output: str, system: str | None = None) -> dict:
    return {ALPACA_COLUMNS["prompt"]: prompt, ALPACA_COLUMNS["query"]: "", ALPACA_COLUMNS["response"]: output,
            ALPACA_COLUMNS["system"]: system or ""}


def to_sharegpt(prompt: str, output: str, system: str | None = None) -> dict:
    r, c = SHAREGPT_TAGS["role_tag"], SHAREGPT_TAGS["content_tag"]
    return {SHAREGPT_COLUMNS["messages"]: [{r: SHAREGPT_TAGS["user_tag"], c: prompt},
                                           {r: SHAREGPT_TAGS["assistant_tag"], c: output}],
            SHAREGPT_COLUMNS["system"]: system or ""}


def default_dataset_name(fmt: str) -> str:
    return f"ourrec_sft_{fmt}"


def default_data_file(fmt: str) -> str:
    """File name of the format's data: what process_sft_data.py writes by default and dataset_info registers."""
    return f"{default_dataset_name(fmt)}.json"


def dataset_info_entry(fmt: str, file_name: str) -> dict:
    """The LLaMA-Factory dataset_info.json entry for records of this format stored in file_name."""
    if fmt not in FORMATS:
        raise UserInputError(f"--format {fmt!r}: must be {'|'.join(FORMATS)}")
    entry: dict[str, Any] = {"file_name": file_name, "formatting": fmt,
                             "columns": dict(ALPACA_COLUMNS if fmt == "alpaca" else SHAREGPT_COLUMNS)}
    if fmt == "sharegpt":
        entry["tags"] = dict(SHAREGPT_TAGS)
    return entry


def dataset_info() -> dict:
    """The content of sft_train/dataset_info.json: both formats under their default names and file names."""
    return {default_dataset_name(f): dataset_info_entry(f, default_data_file(f)) for f in FORMATS}


def render_dataset_info(info: dict) -> str:
    return json.dumps(info, indent=2, ensure_ascii=False) + "\n"


def record_columns(fmt: str) -> set[str]:
    return set((ALPACA_COLUMNS if fmt == "alpaca" else SHAREGPT_COLUMNS).values())


def read_dataset_info(path: str | os.PathLike, flag: str) -> dict:
    """An existing dataset_info.json (validated: a JSON object of entries), or {} when there is none."""
    p = Path(path)
    if not p.exists():
        return {}
    try:
        info = read_json(p)
    except (ValueError, OSError) as e:
        raise UserInputError(f"{flag}: {p} exists but is not a readable dataset_info.json ({e}); fix or remove it")
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise UserInputError(f"{flag}: {p} is not a LLaMA-Factory dataset_info.json (an object of dataset entries)")
    return info


PROMPT_FIELDS = ("id", "label", "prompt")  # what every row of a generate_prompts.py file has


def check_prompt_output(path: str | os.PathLike, flag: str = "--output_file") -> None:
    """Refuse to replace an existing file that is not a prompt JSONL of generate_prompts.py."""
    p = Path(path)
    if not p.exists():
        check_output_path(p, flag)
        return
    ours = p.is_file()
    if ours:
        try:
            with open(p, encoding="utf-8") as f:
                for line in f:
                    row = loads_json(line) if line.strip() else {k: None for k in PROMPT_FIELDS}
                    if not isinstance(row, dict) or not all(k in row for k in PROMPT_FIELDS):
                        ours = False
                        break
        except (ValueError, UnicodeDecodeError):
            ours = False
    if not ours:
        raise UserInputError(f"{flag} {p}: exists and is not a prompt file of generate_prompts.py; "
                             "choose another path or remove it")


def check_sft_output(path: str | os.PathLike, flag: str = "--output_file") -> None:
    """Refuse to replace an existing file that is not SFT data (a JSON list of alpaca/sharegpt records)."""
    p = Path(path)
    if not p.exists():
        return
    try:
        recs = read_json(p, MAX_JSON_BYTES) if p.is_file() else None
    except (ValueError, OSError, UnicodeDecodeError):
        recs = None
    ours = isinstance(recs, list) and all(isinstance(r, dict) and (ALPACA_COLUMNS["prompt"] in r or
                                                                   SHAREGPT_COLUMNS["messages"] in r) for r in recs)
    if not ours:
        raise UserInputError(f"{flag} {p}: exists and is not SFT data written by process_sft_data.py; "
                             "choose another path or remove it")


def latest_by_id(rows: Iterable[dict]) -> list[dict]:
    """One row per id (the last one written wins: a rerun that re-asked a failed prompt appends the newer
    answer), sorted by id; concurrent API workers append rows in completion order. Rows without an id follow."""
    by_id: dict[int, dict] = {}
    no_id: list[dict] = []
    for r in rows:
        if "id" in r:
            by_id[int(r["id"])] = r
        else:
            no_id.append(r)
    return [by_id[i] for i in sorted(by_id)] + no_id


def filter_sft_rows(rows: Iterable[dict], fmt: str = "alpaca", keep_reasoning: bool = False,
                    canonical: bool = False, system: str | None = None) -> tuple[list[dict], Counter]:
    """Keep rows whose final Yes/No equals the label; return (LLaMA-Factory records in id order, counts by
    outcome). Duplicate ids count once (the last row)."""
    if fmt not in FORMATS:
        raise UserInputError(f"--format {fmt!r}: must be {'|'.join(FORMATS)}")
    conv = to_alpaca if fmt == "alpaca" else to_sharegpt
    counts: Counter = Counter({k: 0 for k in ("kept", *DROP_REASONS)})
    out = []
    for row in latest_by_id(rows):
        outcome, _ = classify_response(row)
        counts[outcome] += 1
        if outcome == "kept":
            prompt = row.get("prompt")
            if not prompt and row.get("messages"):
                prompt = next(m["content"] for m in row["messages"] if m.get("role") == "user")
            out.append(conv(prompt, response_output(row, keep_reasoning, canonical), system))
    return out, counts


# ---- SFT training data -------------------------------------------------------------------------
def _record_problem(rec: Any) -> str | None:
    """What makes rec unusable as an SFT record (None if it is fine)."""
    if not isinstance(rec, dict):
        return f"is a {type(rec).__name__}, not an object"
    def text(name: str, required: bool = True) -> str | None:
        v = rec.get(name)
        if v is None:
            return f"'{name}' is missing or null" if required else None
        if not isinstance(v, str):
            return f"'{name}' is a {type(v).__name__}, not text"
        if required and not v.strip():
            return f"'{name}' is empty"
        return None
    if ALPACA_COLUMNS["prompt"] in rec:
        return text(ALPACA_COLUMNS["prompt"]) or text(ALPACA_COLUMNS["response"]) or \
            text(ALPACA_COLUMNS["query"], False) or text(ALPACA_COLUMNS["system"], False)
    if SHAREGPT_COLUMNS["messages"] in rec:
        conv = rec[SHAREGPT_COLUMNS["messages"]]
        r, c = SHAREGPT_TAGS["role_tag"], SHAREGPT_TAGS["content_tag"]
        if not isinstance(conv, list) or len(conv) < 2:
            return f"'{SHAREGPT_COLUMNS['messages']}' must be a list of at least two turns"
        for i, t in enumerate(conv):
            if not isinstance(t, dict) or not isinstance(t.get(r), str) or not isinstance(t.get(c), str):
                return f"turn {i} of '{SHAREGPT_COLUMNS['messages']}' needs text '{r}' and '{c}'"
        if conv[-1][r] != SHAREGPT_TAGS["assistant_tag"]:
            return f"the last turn must be '{SHAREGPT_TAGS['assistant_tag']}'"
        return text(SHAREGPT_COLUMNS["system"], False)
    return (f"has neither alpaca ('{ALPACA_COLUMNS['prompt']}') nor sharegpt ('{SHAREGPT_COLUMNS['messages']}') "
            f"fields: {sorted(rec)[:8]}")


def validate_sft_records(records: Sequence[Any], where: str) -> None:
    """One line naming the first bad record (0-based index) of an SFT data file; `where` is e.g. '--data_file X'."""
    for i, rec in enumerate(records):
        why = _record_problem(rec)
        if why:
            raise UserInputError(f"{where}: record {i} {why}; fix it or rerun sft_train/process_sft_data.py")


def record_to_messages(rec: dict) -> tuple[list[dict], str]:
    """(chat messages up to the user turn, assistant output) from an alpaca or sharegpt record."""
    why = _record_problem(rec)
    if why:
        raise UserInputError(f"SFT record {why}")
    if ALPACA_COLUMNS["prompt"] in rec:
        user = rec[ALPACA_COLUMNS["prompt"]]
        if rec.get(ALPACA_COLUMNS["query"]):  # LLaMA-Factory joins instruction and input with a newline
            user = user + "\n" + rec[ALPACA_COLUMNS["query"]]
        msgs = [{"role": "user", "content": user}]
        output = rec[ALPACA_COLUMNS["response"]]
    else:
        r, c = SHAREGPT_TAGS["role_tag"], SHAREGPT_TAGS["content_tag"]
        conv = rec[SHAREGPT_COLUMNS["messages"]]
        role = {SHAREGPT_TAGS["user_tag"]: "user", SHAREGPT_TAGS["assistant_tag"]: "assistant"}
        msgs = [{"role": role.get(t[r], t[r]), "content": t[c]} for t in conv[:-1]]
        output = conv[-1][c]
    if rec.get("system"):
        msgs = [{"role": "system", "content": rec["system"]}] + msgs
    return msgs, output


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt token ids exactly as the judge builds them: chat template text with the generation prompt,
    encoded without extra special tokens (prompters.binary_prompter.BinaryPrompter does the same)."""
    return tokenizer(generation_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def encode_sft_example(tokenizer, rec: dict, max_length: int) -> dict:
    """input_ids = prompt + response + eos; labels = -100 on the prompt, the token ids on the response.

    Over max_length, the prompt is cut from the left (its end, the candidate and the assistant start, and the
    response carry the signal); a response alone longer than max_length is cut on the right.
    """
    msgs, output = record_to_messages(rec)
    p = chat_prompt_ids(tokenizer, msgs)
    r = tokenizer(output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(p) + len(r) > max_length:
        keep_p = max(0, max_length - len(r))
        p = p[len(p) - keep_p:] if keep_p else []
        r = r[: max_length - len(p)]
    return {"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + list(r), "prompt_len": len(p)}


class SFTDataset:
    """Tokenised SFT records (a list-backed map-style dataset for transformers' Trainer)."""

    def __init__(self, tokenizer, records: Sequence[dict], max_length: int = 2048) -> None:
        if max_length < 2:
            raise UserInputError(f"--max_length {max_length}: must be >= 2")
        self.items = [encode_sft_example(tokenizer, r, max_length) for r in records]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


@dataclass
class SFTCollator:
    """Right-pads input_ids (pad id), labels (-100) and builds the attention mask."""

    pad_token_id: int

    def __call__(self, feats: list[dict]) -> dict:
        import torch

        L = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), L), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(feats), L), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(feats), L), dtype=torch.long)
        for i, f in enumerate(feats):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ---- accuracy of a response file ---------------------------------------------------------------
def accuracy_report(rows: Iterable[dict]) -> dict:
    """Accuracy of parsed answers vs labels. Unparseable answers count as wrong in `accuracy` and are excluded
    from `accuracy_parsed`; precision/recall treat "Yes" as the positive class. The confusion matrix is
    confusion[label][prediction] with prediction in Yes/No/unparseable. A repeated id counts once (last row)."""
    conf = {l: {"Yes": 0, "No": 0, "unparseable": 0} for l in LABELS}
    n = 0
    for row in latest_by_id(rows):
        label = str(row.get("label", "")).strip().capitalize()
        if label not in LABELS:
            raise UserInputError(f"row id {row.get('id')}: label {row.get('label')!r} is not Yes/No")
        pred = None if row.get("error") else parse_yes_no(row.get("response"))
        conf[label][pred or "unparseable"] += 1
        n += 1
    tp, fn = conf["Yes"]["Yes"], conf["Yes"]["No"] + conf["Yes"]["unparseable"]
    fp, tn = conf["No"]["Yes"], conf["No"]["No"]
    unp = conf["Yes"]["unparseable"] + conf["No"]["unparseable"]
    parsed = n - unp
    div = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"n": n, "parsed": parsed, "unparseable": unp, "accuracy": div(tp + tn, n),
            "accuracy_parsed": div(tp + tn, parsed), "precision_yes": div(tp, tp + fp),
            "recall_yes": div(tp, tp + fn), "yes_rate": div(tp + fp, parsed), "confusion": conf}


def format_accuracy_report(r: dict) -> str:
    c = r["confusion"]
    lines = [f"rows {r['n']}  parsed {r['parsed']}  unparseable {r['unparseable']}",
             f"accuracy {r['accuracy']:.4f} (unparseable = wrong)  accuracy_parsed {r['accuracy_parsed']:.4f}",
             f"precision(Yes) {r['precision_yes']:.4f}  recall(Yes) {r['recall_yes']:.4f}  "
             f"predicted Yes rate {r['yes_rate']:.4f}",
             "confusion (rows = label, columns = prediction):",
             f"{'':>10s} {'Yes':>8s} {'No':>8s} {'unparse':>8s}"]
    for l in LABELS:
        lines.append(f"{l:>10s} {c[l]['Yes']:8d} {c[l]['No']:8d} {c[l]['unparseable']:8d}")
    return "\n".join(lines)
