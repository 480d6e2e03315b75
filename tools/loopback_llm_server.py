"""An offline stand-in for an OpenAI-compatible LLM API, so the demo can run compare_model/deepseek.py
without network or key.

    python tools/loopback_llm_server.py --port 8765 &
    python compare_model/deepseek.py --api_base http://127.0.0.1:8765/v1 --api_key local ...

It is a real HTTP server speaking the chat-completions protocol. Its "model" is a transparent heuristic,
not an LLM: for a ranking prompt (compare_model/deepseek.py) it ranks the numbered candidates by word overlap
with the user's history block (ties in prompt order); for a binary judge prompt (sft_train/) it answers
"Answer: Yes" when the candidate's title shares a word with the history, else "Answer: No"; any other prompt
(tools/run_r1_once.py's, a question) gets a short well-formed answer saying what the stand-in is. Every answer
reports the model as `loopback-standin` (--model), whatever model the client asked for, so result files made
through it say so. Use it to check plumbing, never to report a DeepSeek number.
"""
from __future__ import annotations

import argparse
import errno
import re
import time
from pathlib import Path

from foundation.config import HelpFormatter, int_range
from fixtures.loopback_server import LoopbackAPI, good_answer, history_block, parse_prompt_candidates, prompt_text
from foundation.errors import die

STANDIN_MODEL = "loopback-standin"
OTHER_PROMPT_ANSWER = ("I am the loopback stand-in (word overlap, not an LLM): I rank numbered candidate lists "
                       "and answer Yes/No judge prompts; this prompt is neither.\nAnswer: No")

_WORD = re.compile(r"[A-Za-z]{3,}")


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def word_overlap_answer(req: dict, call_number: int) -> str:
    prompt = prompt_text(req)
    judge = re.search(r"\nCandidate [a-z]+:\n(.*?)(?:\n\n|$)", prompt, flags=re.I | re.S)
    if judge:  # binary Yes/No prompt: history comes before the candidate block
        title = judge.group(1).split(" - ")[0]
        history = prompt[: judge.start()]
        liked = bool(_words(title) & _words(re.sub(r"\(rating: [^)]*\)", "", history)) - {"the", "and", "edition"})
        return f"The candidate shares themes with the history.\nAnswer: {'Yes' if liked else 'No'}"
    titles = parse_prompt_candidates(prompt)
    if not titles:  # not a ranking prompt either
        return OTHER_PROMPT_ANSWER
    hist = {w.lower() for w in _WORD.findall(history_block(prompt))}
    overlap = [len({w.lower() for w in _WORD.findall(t)} & hist) for t in titles]
    order = sorted(range(1, len(titles) + 1), key=lambda i: (-overlap[i - 1], i))
    return good_answer(order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--port", type=int_range(0, 65535), default=8765,
                    help="127.0.0.1 port to listen on (0 = any free port; default: 8765)")
    ap.add_argument("--model", default=STANDIN_MODEL,
                    help=f"model name every answer reports, whatever the client asked for (default: {STANDIN_MODEL})")
    ap.add_argument("--port_file", default=None, help="write the bound port here once listening (for scripts)")
    args = ap.parse_args()
    api = LoopbackAPI(responder=lambda req, n: {"content": word_overlap_answer(req, n), "model": args.model},
                      model=args.model)
    try:
        api.start(port=args.port)
    except OSError as e:  # one line naming the port, exit 2 (a client must not talk to whatever holds it)
        if e.errno == errno.EADDRINUSE:
            die(f"--port {args.port}: 127.0.0.1:{args.port} is already in use; pick another port or --port 0")
        die(f"--port {args.port}: cannot listen on 127.0.0.1:{args.port} ({e.strerror or e})")
    url = api.url
    print(f"serving an OpenAI-compatible stand-in at {url} (Ctrl-C to stop)", flush=True)
    if args.port_file:
        Path(args.port_file).write_text(url.rsplit(":", 1)[1].split("/")[0])
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        api.stop()


if __name__ == "__main__":
    main()
