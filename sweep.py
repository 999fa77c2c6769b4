"""Hyperparameter sweeps over train.py flags with Optuna; trials run on compare.py's executors.

    python sweep.py --env-id memrl/NoisyRecall-v0 --backbone lstm \\
        --space learning_rate=loguniform:1e-4:3e-3 ent_coef=choice:0.0,0.01,0.03 \\
        --trials 20 --seeds 1 2 --total-timesteps 200000 --jobs 2 --out sweeps/recall_lstm
    python sweep.py ...same command...        # continues the study (a larger --trials adds trials)

Outputs in --out: trials.csv, best.json, preset.toml (train.py --preset DIR/preset.toml),
summary.md and plots. The machinery is experiments/sweep.py; docs/sweeps.md is the guide.
"""

from __future__ import annotations

import sys

from experiments.sweep import main

if __name__ == "__main__":
    sys.exit(main())
