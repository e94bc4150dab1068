"""Independent high-precision reference values for lib/privacy/rdp.ts (docs/privacy.md#rdp-as-opacus).

Written from the definitions, not from opacus: the sampled Gaussian mechanism with sampling rate
q and noise multiplier sigma has, at order alpha (Mironov, Talwar & Zhang 2019, §3),

    A_alpha = E_{z ~ N(0, sigma^2)} [ ((1 - q) + q * exp((2 z - 1) / (2 sigma^2)))^alpha ]
    rdp     = log(A_alpha) / (alpha - 1)

computed here two ways with mpmath at 50 significant digits:
  * by direct numerical integration of that expectation (any alpha > 1), and
  * for integer alpha, by the exact binomial expansion
    A_alpha = sum_i C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2)).
epsilon = min over orders of rdp - (log delta + log alpha)/(alpha - 1) + log((alpha - 1)/alpha)
(Balle et al. 2020, Thm. 21), and the noise multiplier search is the bisection docs/privacy.md#rdp-as-opacus spells
out. Prints JSON; the numbers are recorded in tests/privacy_rdp.test.ts.

Run: python tools/crosscheck/privacy_rdp_reference.py
"""

import json
import sys

import mpmath as mp

mp.mp.dps = 50

ORDERS = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))


def a_alpha_integral(q, sigma, alpha):
    q, sigma, alpha = mp.mpf(q), mp.mpf(sigma), mp.mpf(alpha)

    def f(z):
        ratio = (1 - q) + q * mp.exp((2 * z - 1) / (2 * sigma**2))
        return mp.npdf(z, 0, sigma) * ratio**alpha

    # The integrand's mass sits near 0 (Gaussian) and, for the mixture term, near alpha;
    # break the range there so the quadrature sees both.
    pts = sorted({-mp.inf, -12 * sigma, mp.mpf(0), alpha / 2, alpha, alpha + 12 * sigma, mp.inf})
    return mp.quad(f, pts)


def a_alpha_binomial(q, sigma, alpha):
    q, sigma = mp.mpf(q), mp.mpf(sigma)
    return mp.fsum(
        mp.binomial(alpha, i) * q**i * (1 - q) ** (alpha - i) * mp.exp(mp.mpf(i * i - i) / (2 * sigma**2))
        for i in range(alpha + 1)
    )


def rdp(q, sigma, alpha):
    if q == 1:
        return mp.mpf(alpha) / (2 * mp.mpf(sigma) ** 2)
    if float(alpha).is_integer():
        a = a_alpha_binomial(q, sigma, int(alpha))
    else:
        a = a_alpha_integral(q, sigma, alpha)
    return mp.log(a) / (mp.mpf(alpha) - 1)


def epsilon(rdps, orders, delta):
    best, best_order = None, None
    for r, a in zip(rdps, orders):
        a = mp.mpf(a)
        e = r - (mp.log(delta) + mp.log(a)) / (a - 1) + mp.log((a - 1) / a)
        if best is None or e < best:
            best, best_order = e, a
    return best, best_order


def search(eps_of, target, tol=0.01):
    lo, hi, eps_hi = 0.0, 10.0, float("inf")
    while eps_hi > target:
        hi = 2 * hi
        eps_hi = eps_of(hi)
    while target - eps_hi > tol:
        mid = (lo + hi) / 2
        e = eps_of(mid)
        if e < target:
            hi, eps_hi = mid, e
        else:
            lo = mid
    return hi


def main():
    out = {}
    # 1. Per-order RDP of one step, fractional and integer orders.
    sel = [1.1, 1.5, 2.0, 2.5, 3.7, 10.9, 12, 32, 63]
    cases = [(0.01, 1.1), (0.2, 0.8), (0.001, 3.0), (0.05, 5.0)]
    out["rdp"] = []
    for q, s in cases:
        vals = [float(rdp(q, s, a)) for a in sel]
        out["rdp"].append({"q": q, "sigma": s, "orders": sel, "rdp": vals})
    # Consistency of the two methods at integer orders (integral vs exact sum).
    agree = []
    for q, s in cases:
        for a in (2, 5, 12):
            i1 = a_alpha_integral(q, s, a)
            i2 = a_alpha_binomial(q, s, a)
            agree.append(float(abs(mp.log(i1) - mp.log(i2)) / abs(mp.log(i2))))
    out["integral_vs_binomial_max_rel"] = max(agree)
    # 2. epsilon over the full default order grid.
    eps_cases = [(0.01, 1.1, 1000, 1e-5), (256 / 60000, 1.1, 14070, 1e-5), (0.05, 2.0, 300, 1e-6)]
    out["epsilon"] = []
    for q, s, steps, delta in eps_cases:
        r1 = [rdp(q, s, a) for a in ORDERS]
        e, a = epsilon([x * steps for x in r1], ORDERS, delta)
        out["epsilon"].append({"q": q, "sigma": s, "steps": steps, "delta": delta, "epsilon": float(e), "order": float(a)})
        print("eps case done", q, s, file=sys.stderr)
    # 3. The docs/privacy.md#rdp-as-opacus search over integer orders only (exact binomial sums: fast).
    int_orders = list(range(2, 64))
    out["search_integer_orders"] = []
    for target, q, steps, delta in [(2.0, 0.01, 1000, 1e-5), (1.0, 0.004, 12500, 1 / 12)]:
        def eps_of(s):
            r1 = [rdp(q, s, a) for a in int_orders]
            return float(epsilon([x * steps for x in r1], int_orders, delta)[0])
        out["search_integer_orders"].append({"target": target, "q": q, "steps": steps, "delta": delta, "sigma": search(eps_of, target)})
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
