"""The studies' plans: each study is a set of runs, each run the settings it changes from the spec.

Data only, read by `studies.py` (which runs them) and `settings.py` (which lets a study's run, and
nothing else, write into `results/studies/NAME/RUN/`).
"""

BINARIZED = {"likelihood": "binarized", "iw_samples": 5000}  # the literature's setting and estimate

STUDIES = {
    "seeds": {f"seed{seed}": {"seed": seed} for seed in range(5)},
    "likelihoods": {
        "bernoulli": {"likelihood": "bernoulli"},
        "continuous_bernoulli": {"likelihood": "continuous_bernoulli"},
        "binarized": BINARIZED,
    },
    "latent_sizes": {f"latent{size}": {"latent_dim": size} for size in (2, 5, 10, 20, 50)},
    "beta": {f"beta{beta:g}": {"beta": beta} for beta in (0.5, 1.0, 2.0, 4.0)},
    "objectives": {
        "elbo": BINARIZED,
        "elbo_warmup": {**BINARIZED, "kl_warmup": 10},
        "iwae5": {**BINARIZED, "objective": "iwae", "train_samples": 5},
        "iwae50": {**BINARIZED, "objective": "iwae", "train_samples": 50},
    },
    "budget": {
        **{f"epochs{n}": {**BINARIZED, "epochs": n} for n in (20, 60, 180, 540)},
        "epochs540_burda": {**BINARIZED, "epochs": 540, "lr_schedule": "burda"},  # Burda et al.'s rate schedule
    },
}

# Published importance-weighted estimates of -log p(x) on binarised MNIST, one stochastic layer.
PUBLISHED = [
    ("Burda et al. 2015, table 1 (VAE, k = 1 training)", 86.76, "784-200-200-50, 3,280 passes over the data, k = 5000"),
    ("Rezende & Mohamed 2015 (DLGM, diagonal Gaussian posterior)", 89.9, "reported as a bound: -log p(x) <= 89.9"),
]
# Burda et al. 2016, table 1, one stochastic layer: (objective, k) -> (-log p(x), active units)
BURDA = {("elbo", 1): (86.76, 19), ("iwae", 5): (85.54, 22), ("iwae", 50): (84.78, 25)}
BURDA_MODEL = "784-200-200-50 (tanh), 3,280 passes, Adam with a decaying rate, k = 5000"
