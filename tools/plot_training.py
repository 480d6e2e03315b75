"""Plot reward and validation NDCG against step from a train.py metrics.jsonl into a PNG."""
from __future__ import annotations

import argparse
import os

from foundation.config import HelpFormatter, nonnegative_int
from foundation.errors import exit_on_user_error
from foundation.files import check_output_path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--metrics_file", required=True, help="metrics.jsonl written by train.py")
    p.add_argument("--output", default=None, help="PNG path (default: training.png next to the metrics file)")
    p.add_argument("--smooth", type=nonnegative_int, default=0,
                   help="EMA window of the reward curve in steps; 0: adapted to the run (a tenth of its steps, 2..50)")
    args = p.parse_args(argv)
    from foundation.plotting import plot_training

    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.metrics_file)), "training.png")
    with exit_on_user_error():
        check_output_path(out, "--output")
        path = plot_training(args.metrics_file, out, smooth=args.smooth or None)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
