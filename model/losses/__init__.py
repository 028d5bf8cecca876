"""Training losses beyond the seed's SSE + KL.

- ``perceptual.py``: VGG feature matching (DFC-VAE perceptual loss).
- ``structural.py``: SSIM / MS-SSIM losses.
- ``kl.py``: free bits.
- ``objective.py``: the total loss.
"""
