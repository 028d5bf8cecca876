"""What a trained model does well and badly, measured: ``python -m model evaluate`` and the
evaluation every training run ends with.

    settings.py  how much to look at (FULL for the command, LIGHT at the end of training)
    collect.py   one pass over a split: per-image numbers, latent sums, IWAE weights, worst examples
    summary.py   those numbers → evaluation.json's keys
    figures.py   evaluation.png and failure_modes.png
    report.py    the rich table printed at the end
    run.py       evaluate_model: all of the above, all ranks reading, rank 0 writing; other readers of the
                 split (a run's test metrics and pictures) can share its pass
    pictures.py  labelled tables of faces (failure modes here; strips, reconstructions, edits for python -m model)
    outputs.py   files written whole (temp + rename), one PNG per image, animated GIFs

The metric functions themselves are in ``model.metrics``.
"""
from model.evaluation.report import evaluation_table
from model.evaluation.run import FILES, evaluate_model
from model.evaluation.settings import FULL, LIGHT, EvalSettings, eval_settings
from model.evaluation.summary import scalars_of

__all__ = ["FILES", "FULL", "LIGHT", "EvalSettings", "eval_settings", "evaluate_model", "evaluation_table",
           "scalars_of"]
