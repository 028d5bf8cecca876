"""What a trained model does well and badly, measured: ``python -m model evaluate`` and the
evaluation every training run ends with.

    settings.py  how much to look at (FULL for the command, LIGHT at the end of training)
    collect.py   one pass over a split: per-image numbers, latent sums, IWAE weights, worst examples
    summary.py   those numbers → evaluation.json's keys
    figures.py   evaluation.png and failure_modes.png
    report.py    the rich table printed at the end
    run.py       evaluate_model: all of the above, all ranks reading, rank 0 writing

The metric functions themselves are in ``model.metrics``.
"""
from model.evaluation.run import FILES, evaluate_model
from model.evaluation.settings import FULL, LIGHT, EvalSettings

__all__ = ["FILES", "FULL", "LIGHT", "EvalSettings", "evaluate_model"]
