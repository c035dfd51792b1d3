"""Benchmarks: each module ``trajir.bench.<name>`` has ``main(argv) -> int`` and prints its measurements
side by side, as ratios taken in one run. Tests never assert timings; these scripts report them."""

# benchmark name -> one-line description; the module trajir.bench.<name> implements it
BENCHMARKS = {
    "rewards": "images/s of the in-house reward metrics (PSNR, SSIM, NIQE, UCIQE, UIQM) against pyiqa's",
    "sampler": "time per step of sample_msde (eta 0 and 1) against a bare Euler loop",
    "data": "time per image of each synthetic degradation against reading the image from disk",
    "models": "ControlNet training step with / without checkpointing (full FLUX-dev on CUDA), U-Net, autoencoder",
    "train": "FLUX-IR ControlNet training step through the trainer: time and peak memory, bf16 vs fp8 base",
}
