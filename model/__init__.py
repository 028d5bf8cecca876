"""The Conv-VAE and what training it takes.

    vae.py        the seed's network (ConvVAE, VAEConfig); the loss path comes from ``kernels``
    flops.py      its counted FLOPs per image (the MFU numerator)
    summary.py    ``python -m model.summary``: layer table and parameter count
    __main__.py   ``python -m model COMMAND`` (console script ``vae-model``): summary, sample,
                  reconstruct, interpolate, encode, attributes, edit, evaluate with a trained checkpoint
    losses/       the objective: the fused SSE + β·KL, σ-VAE term, free bits, VGG perceptual, (MS-)SSIM
    metrics/      PSNR, SSIM, IWAE bits/dim, active units, sharpness, regions, attributes, diversity, FID
    evaluation/   ``evaluate``'s pass over a split (a run's test metrics and pictures ride along it):
                  evaluation.json/png, failure_modes.png; the labelled picture tables and the files
                  written whole that it and the commands write
    use/          those commands: checkpoint loading, faces in through ``pipeline``, latent
                  arithmetic, attribute directions
    training/     the trainer's helpers, used by train.py, one module per concept:
                  config (config.json, --key value, bounds), runtime (device, DDP, AMP, compile; the CPU probe),
                  data (shards → loaders, the default data), step (build, schedules, TrainStep, when to log,
                  checkpoint and stop), checkpoint (atomic writes, checkpoints and their background writer, the
                  run lock), observe (metrics.jsonl and the list of log sinks, progress, TensorBoard, GPU
                  utilisation and MFU, pictures), validate (the per-epoch validation and the test's numbers),
                  signals (Ctrl-C/SIGTERM: checkpoint the step, agree across ranks)

Inside ``model`` imports point down: vae/flops ← metrics ← losses ← training ← evaluation ← summary ← use.
``model`` may import ``pipeline`` and ``kernels``; it never imports ``train`` or ``bench``.
"""
