"""Benchmarks: is the GPU busy, and what is holding it back? Results go to bench/RESULTS.md.

Where things are:

    __main__.py          ``python -m bench``: the whole suite (loader, loss, train_step, input, profile),
                         a summary against the H100 targets, a synthetic set when no --shards is given
    common.py            what every benchmark shares: timing, environment capture, a rich table, JSON
    loader.py            loader throughput: images/s per decode path on preshard's shards
    loss.py              the loss path (reparam_kl + vae_loss): eager vs compiled vs fused
    train_step.py        train-step throughput on device-resident data, and MFU: the upper bound
    input_efficiency.py  loader-fed vs resident steps, GPU utilization, epoch time, per cache epoch
    profile.py           torch.profiler over real steps: Chrome trace, top kernels, GPU idle share
    quality.py           ``python -m bench.quality``: what each next step does to blur, backgrounds, faces
    gpu_session.sh       the GPU measurement of RESULTS.md in one bounded command (``quick``, then ``dali``):
                         gpu_session.py its plan and loop, gpu_driver.py the session and a part's subprocess,
                         gpu_parts.py the parts, gpu_readings.py NVML and per-epoch readings of train.py,
                         gpu_step_grid.py the train-step grid preset first, gpu_data.py a set sized by drawing
                         time, gpu_decode.py torchvision's GPU JPEG decode; stage_wheels.sh the wheels for a
                         machine without network

The top layer: ``bench`` uses ``model``, ``pipeline`` and ``kernels`` (and runs ``train.py`` as a program);
nothing imports ``bench`` but its own tests (tests/test_layering.py checks it).
"""
