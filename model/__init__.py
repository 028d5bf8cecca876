"""The Conv-VAE and what training it takes.

    vae.py        the seed's network (ConvVAE, VAEConfig); the loss path comes from ``kernels``
    flops.py      its counted FLOPs per image (the MFU numerator)
    summary.py    ``python -m model.summary``: layer table and parameter count
    __main__.py   ``python -m model COMMAND`` (console script ``vae-model``): summary, sample,
                  reconstruct, interpolate, encode, attributes, edit, evaluate with a trained checkpoint
    losses/       the objective: the fused SSE + β·KL, σ-VAE term, free bits, VGG perceptual, (MS-)SSIM
    metrics/      PSNR, SSIM, IWAE bits/dim, active units, sharpness, regions, attributes, diversity, FID
    evaluation/   ``evaluate``'s pass over a split: evaluation.json/png, failure_modes.png
    use/          those commands: checkpoint loading, faces in through ``pipeline``, latent
                  arithmetic, attribute directions, pictures and files written whole
    training/     the trainer's helpers, used by train.py: config, runtime (device, DDP, AMP,
                  compile), probe (CPU "auto" by timing the step), data (shards → loaders), build (model on the device, DDP, compile),
                  train_step, schedules, evaluate, checkpoint, metrics_log, progress, artifacts (pictures),
                  gpu_util (NVML sampler), peak (measured matmul peak, the MFU denominator),
                  signals (Ctrl-C/SIGTERM: checkpoint the step, agree across ranks), run_lock
                  (one trainer per run directory), disk_full (atomic writes, a full disk as one line)
                  tensorboard_log (optional TensorBoard events, ``tensorboard: true``)

``model`` may import ``pipeline`` and ``kernels``; it never imports ``train`` or ``bench``.
"""
