"""Using a trained model: ``python -m model COMMAND`` (also the ``vae-model`` console script).

    cli.py              the command line: one subparser per command, shared options, dispatch
    loading.py          --run/--checkpoint → the checkpoint file, read safely on any device → the ConvVAE
    faces.py            the faces a command works on: image files or sample keys (through ``pipeline``),
                        and whole splits encoded through ``pipeline.make_loader`` with a progress bar
    latent.py           the latent-space arithmetic: prior samples, lerp/slerp walks, edits
    directions.py       attribute directions (mean μ with an attribute minus without it): compute,
                        save beside the checkpoint, load, look names up
    replaceable.py      outputs that would replace an input or somebody's file: refused before any work
    commands_pictures.py  summary, sample, reconstruct, interpolate
    commands_latents.py   encode, attributes, edit
    commands_evaluate.py  evaluate: the diagnosing evaluation of ``model.evaluation`` (PSNR, SSIM, IWAE
                          bits/dim, active units, failure modes) on a split, into RUN/evaluation/

Files written whole and the labelled tables of faces come from ``model.evaluation`` (outputs.py,
pictures.py), which the closing evaluation of a training run uses too.

Every command reads the network's shape from the checkpoint's own config, runs it in eval mode in
fp32, and validates its whole input (files, keys, attribute names) before it computes or writes
anything, so bad input ends with one line and exit code 2 and leaves no partial output.
"""
