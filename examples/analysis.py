"""A small, real analysis for the README's first command.

Bootstraps a 95 % confidence interval of the mean of a skewed sample (pure Python, no
third-party packages), prints a summary and writes it to `bootstrap.json` in the
working directory.
"""
import json
import random
import statistics
import sys

random.seed(42)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
sample = [random.lognormvariate(0.0, 1.0) for _ in range(n)]
means = sorted(
    statistics.fmean(random.choices(sample, k=n)) for _ in range(rounds)
)
result = {
    "n": n,
    "rounds": rounds,
    "mean": statistics.fmean(sample),
    "ci95": [means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]],
}
with open("bootstrap.json", "w") as f:
    json.dump(result, f, indent=2)
print(f"mean {result['mean']:.3f}, 95% CI [{result['ci95'][0]:.3f}, {result['ci95'][1]:.3f}]", file=sys.stderr)
