"""The evaluation layer: metrics, the candidate protocol, result files and every evaluator (judge, RRec, API)."""
