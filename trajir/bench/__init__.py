"""Benchmarks: each module ``trajir.bench.<name>`` has ``main(argv) -> int`` and prints its measurements
side by side, as ratios taken in one run. Tests never assert timings; these scripts report them."""

# benchmark name -> one-line description; the module trajir.bench.<name> implements it
BENCHMARKS = {
    "sampler": "time per step of sample_msde (eta 0 and 1) against a bare Euler loop",
    "data": "time per image of each synthetic degradation against reading the image from disk",
}
