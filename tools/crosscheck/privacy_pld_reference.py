"""Independent reference values for lib/privacy/pld.ts, from Google's dp_accounting.

dp_accounting is not a dependency of the toolkit and is not on the local pip index; its source
(python/dp_accounting of the public google/differential-privacy repository) runs offline with
numpy, scipy, mpmath, absl-py and attrs. Point PYTHONPATH at that folder:

    PYTHONPATH=/path/to/differential-privacy/python/dp_accounting \
      python3 tools/crosscheck/privacy_pld_reference.py > tests/fixtures/privacy_pld_reference.json

For every setting it records dp_accounting's PLD accountant (add/remove adjacency, its default
pessimistic "connect the dots" discretisation at 1e-4) and, for full participation, the closed
form of T Gaussian releases at noise multiplier sigma, a Gaussian with mu = sqrt(T)/sigma:
delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), solved for eps with scipy.
"""

import json
import math

from scipy import optimize, stats

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

# (sigma, q, T, delta): full participation and Poisson sampling, T from 1 to 10,000.
SETTINGS = [
    (1.0, 1.0, 1, 1e-5),
    (2.0, 1.0, 10, 1e-5),
    (0.5, 1.0, 3, 1e-5),
    (5.0, 1.0, 100, 1e-5),
    (20.0, 1.0, 10000, 1e-5),
    (1.2, 1.0, 50, 1e-6),
    (3.0, 1.0, 1000, 1e-8),
    (1.0, 0.01, 1000, 1e-5),
    (1.0, 0.01, 10000, 1e-5),
    (1.1, 256 / 60000, 10000, 1e-5),
    (0.8, 0.1, 100, 1e-5),
    (2.0, 0.5, 20, 1e-5),
    (1.5, 0.2, 200, 1e-6),
    (4.0, 0.05, 10000, 1e-5),
    (0.7, 0.02, 500, 1e-5),
    (1.0, 0.001, 10000, 1e-7),
    (3.0, 20 / 100, 100, 1e-5),
    (2.0, 20 / 1000, 1000, 1e-5),
    (0.9, 0.3, 50, 1e-5),
    (6.0, 0.9, 100, 1e-5),
    (1.0, 0.25, 12, 1e-5),
    (10.0, 0.05, 5000, 1e-6),
]


def closed_form(sigma, steps, delta):
    mu = math.sqrt(steps) / sigma

    def gap(eps):
        # e^eps * Phi(.) in log space: the two factors over- and underflow separately.
        d = stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2))
        return d - delta

    return optimize.brentq(gap, 0, 500, xtol=1e-14, rtol=1e-14)


def dp_accounting_epsilon(sigma, q, steps, delta):
    acc = pld_privacy_accountant.PLDAccountant()
    event = dp_event.GaussianDpEvent(sigma)
    if q < 1:
        event = dp_event.PoissonSampledDpEvent(q, event)
    acc.compose(event, steps)
    return acc.get_epsilon(delta)


rows = []
for sigma, q, steps, delta in SETTINGS:
    row = {"noiseMultiplier": sigma, "sampleRate": q, "steps": steps, "delta": delta,
           "dpAccounting": dp_accounting_epsilon(sigma, q, steps, delta)}
    if q == 1:
        row["closedForm"] = closed_form(sigma, steps, delta)
    rows.append(row)
print(json.dumps(rows, indent=1))
