"""The evaluation layer: metrics, the candidate protocol, result files, the one evaluation runner and every ranker
(judge, RRec, API, sequential), and the evaluation scripts' options."""
