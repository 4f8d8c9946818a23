"""The studies' plans: each study's runs, each run the settings it changes from the spec. Data only."""

BINARIZED = {"likelihood": "binarized", "iw_samples": 5000}  # the literature's setting and estimate
OBJECTIVES = {"elbo": {}, "elbo_warmup": {"kl_warmup": 10}, "iwae5": {"objective": "iwae", "train_samples": 5},
              "iwae50": {"objective": "iwae", "train_samples": 50}}  # fmt: skip
BURDA540 = {**BINARIZED, "epochs": 540, "lr_schedule": "burda"}  # 540 passes on Burda et al.'s rate schedule


def seeded(rows: dict, base: dict, seeds=(0, 1, 2)) -> dict:
    """Each row's run with each seed: `run` for seed 0 (its run from before seeds were added), `run_seedN`."""
    return {
        run + (f"_seed{seed}" if seed else ""): {**base, **row, **({"seed": seed} if seed else {})}
        for run, row in rows.items()
        for seed in seeds
    }


STUDIES = {
    "seeds": {f"seed{seed}": {"seed": seed} for seed in range(5)},
    "likelihoods": {
        "bernoulli": {"likelihood": "bernoulli"},
        "continuous_bernoulli": {"likelihood": "continuous_bernoulli"},
        "binarized": BINARIZED,
    },
    "latent_sizes": {f"latent{size}": {"latent_dim": size} for size in (2, 5, 10, 20, 50)},
    "beta": {f"beta{beta:g}": {"beta": beta} for beta in (0.5, 1.0, 2.0, 4.0)},
    "objectives": seeded(OBJECTIVES, BINARIZED),  # 20 epochs, 3 seeds each
    "budget": {
        **{f"epochs{n}": {**BINARIZED, "epochs": n} for n in (20, 60, 180, 540)},
        "epochs540_burda": BURDA540,
    },
    "burda540": seeded({run: OBJECTIVES[run] for run in ("elbo", "elbo_warmup", "iwae5")}, BURDA540),
    "dreg540": seeded(
        {
            "iwae5_dreg": {**OBJECTIVES["iwae5"], "gradient": "dreg"},  # beside burda540's iwae5
            "iwae5_dreg_eps": {**OBJECTIVES["iwae5"], "gradient": "dreg", "adam_eps": 1e-4},
        },
        BURDA540,
    ),
}
