/**
 * The privacy frontier (notebook 09): test accuracy against the client-level ε each run spent,
 * under strict client-level DP with the PLD accountant, in a cross-silo regime (full
 * participation) and cross-device regimes (Poisson participation), against the frozen model.
 *
 * {@link frontierPoints} builds the grid, {@link frontierFigure} draws one regime, and
 * {@link describeFrontier} writes the conclusion from the per-seed accuracies: each point against
 * the frozen model's accuracy (which does not depend on the seed), by the paired t-test and the
 * exact sign-flip test of lib/metrics/paired.ts.
 *
 * @module
 */

import type { FederatedConfig } from "./fl/simulation.ts";
import type { MethodChoice, SummaryRow, SweepPoint } from "./ablations.ts";
import { formatEpsilon } from "./ablations.ts";
import { formatP, pairedComparison, seedsCaveat, signed } from "./metrics/paired.ts";
import { linesFigure } from "./plot/ablations.ts";
import { colorOf, type Figure } from "./plot/figures.ts";

/** A federation regime: K clients, each taking part in a round with probability q. */
export interface FrontierRegime {
  name: string;
  numClients: number;
  /** Poisson participation rate q (1: every client every round). */
  participation: number;
}

/** The methods on the frontier (strict DP): LoRA, FFA-LoRA, DEeR and FedSVD. */
export const FRONTIER_METHODS: MethodChoice[] = [
  { name: "LoRA", method: { method: "LoRA" } },
  { name: "FFA-LoRA", method: { method: "FFA-LoRA" } },
  { name: "DEeR", method: { method: "DEeR", eliminateDeviation: true, regulateNoise: true } },
  { name: "FedSVD", method: { method: "FedSVD" } },
];

/**
 * A regime with an expected cohort of `cohort` clients out of K (q = cohort / K; 1 when
 * cohort ≥ K), named `cross-silo K=12` or `cross-device K=100, q=0.2`.
 *
 * @example
 * ```ts
 * cohortRegime(100, 20); // { name: "cross-device K=100, q=0.2", numClients: 100, participation: 0.2 }
 * ```
 */
export function cohortRegime(numClients: number, cohort: number): FrontierRegime {
  if (!(Number.isInteger(numClients) && numClients >= 2)) {
    throw new Error(`cohortRegime: numClients ${numClients}: need an integer ≥ 2`);
  }
  if (!(cohort > 0)) throw new Error(`cohortRegime: cohort ${cohort}: need > 0`);
  const q = Math.min(1, cohort / numClients);
  return q >= 1 ? { name: `cross-silo K=${numClients}`, numClients, participation: 1 } : {
    name: `cross-device K=${numClients}, q=${Number(q.toPrecision(3))}`,
    numClients,
    participation: q,
  };
}

/**
 * The frontier grid: every regime × method × target ε, strict calibration with the PLD
 * accountant (the base's clip and δ). Labels read `DEeR · cross-silo K=12 · ε=3`.
 */
export function frontierPoints(
  base: FederatedConfig,
  opts: { methods: MethodChoice[]; regimes: FrontierRegime[]; epsilons: number[] },
): SweepPoint[] {
  const dp = base.dp ?? { calibration: "strict", clip: 0.5, epsilon: 6, delta: 1e-5 };
  return opts.regimes.flatMap((regime) =>
    opts.methods.flatMap((m) =>
      opts.epsilons.map((epsilon) => ({
        label: `${m.name} · ${regime.name} · ε=${epsilon}`,
        params: { method: m.name, regime: regime.name, epsilon },
        config: {
          ...base,
          method: m.method,
          numClients: regime.numClients,
          participation: regime.participation,
          dp: { ...dp, calibration: "strict" as const, accountant: "pld" as const, epsilon },
        },
      }))
    )
  );
}

/** One colour per frontier method (the shared palette colours by family: FedSVD would share one). */
const METHOD_COLORS: Record<string, string> = {
  "LoRA": "#7f7f7f",
  "FFA-LoRA": "#1f77b4",
  "DEeR": "#d62728",
  "FedSVD": "#2ca02c",
};

/** Half-width of a 95 % interval (null with one seed). */
function halfWidth(r: SummaryRow): number | null {
  const ci = r.interval.accuracy;
  return Number.isFinite(ci.high) ? ci.high - ci.mean : null;
}

/**
 * Accuracy against the client-level ε spent, one line per method, for one regime; the frozen
 * model is a dotted horizontal line across the ε range. Error bars: 95 % t interval over seeds.
 */
export function frontierFigure(rows: SummaryRow[], regime: string, frozen: number): Figure {
  const mine = rows.filter((r) => r.params.regime === regime && r.spentEpsilon !== null);
  const methods = [...new Set(mine.map((r) => String(r.params.method)))];
  const eps = mine.map((r) => r.spentEpsilon!);
  // The frozen line spans the points' ε range, widened by a factor 1.5 each side (log axis).
  const lo = (eps.length ? Math.min(...eps) : 1) / 1.5;
  const hi = (eps.length ? Math.max(...eps) : 10) * 1.5;
  const seeds = Math.max(0, ...mine.map((r) => r.seeds.length));
  const fig = linesFigure({
    title: `${regime}: test accuracy against client-level ε spent (strict, PLD; ` +
      (seeds >= 2 ? `mean ± 95 % CI over ${seeds} seeds)` : `${seeds} seed, no interval)`),
    xTitle: "client-level ε spent (δ = 1e-5, log scale)",
    yTitle: "test accuracy (%)",
    logX: true,
    series: [
      ...methods.map((m) => {
        const pts = mine.filter((r) => r.params.method === m)
          .sort((a, b) => a.spentEpsilon! - b.spentEpsilon!);
        return {
          name: m,
          x: pts.map((r) => r.spentEpsilon!),
          y: pts.map((r) => r.accuracy),
          errors: pts.map(halfWidth),
          color: METHOD_COLORS[m] ?? colorOf(pts[0]?.family ?? m),
          text: pts.map((r) =>
            `${r.label}: ${r.accuracy.toFixed(2)}; spent ε ${formatEpsilon(r.spentEpsilon)}`
          ),
        };
      }),
      {
        name: `frozen model (${frozen.toFixed(2)})`,
        x: [lo, hi],
        y: [frozen, frozen],
        color: "#444444",
        dash: "dot" as const,
      },
    ],
  });
  // The frozen model is a line, not points.
  const line = fig.data[fig.data.length - 1];
  fig.data[fig.data.length - 1] = { ...line, mode: "lines" };
  return fig;
}

/** One point of the frontier against the frozen model. */
export interface FrontierFinding {
  label: string;
  method: string;
  regime: string;
  targetEpsilon: number;
  spentEpsilon: number | null;
  accuracy: number;
  /** Accuracy − frozen, mean over seeds, with its 95 % t interval (NaN bounds with one seed). */
  difference: number;
  low: number;
  high: number;
  seeds: number;
  tTestP: number;
  signFlipP: number;
}

/** Every successful point against the frozen model's accuracy, seed by seed. */
export function frontierFindings(rows: SummaryRow[], frozen: number): FrontierFinding[] {
  return rows.filter((r) => r.error === null).flatMap((r) => {
    const acc = r.perSeed.accuracy.filter((v) => Number.isFinite(v));
    if (acc.length === 0) return [];
    const c = pairedComparison(acc, acc.map(() => frozen));
    return [{
      label: r.label,
      method: String(r.params.method),
      regime: String(r.params.regime),
      targetEpsilon: Number(r.params.epsilon),
      spentEpsilon: r.spentEpsilon,
      accuracy: r.accuracy,
      difference: c.mean,
      low: c.low,
      high: c.high,
      seeds: c.n,
      tTestP: c.tTestP,
      signFlipP: c.signFlipP,
    }];
  });
}

/**
 * The frontier's conclusion, computed from the rows: per regime, the points significantly above
 * the frozen model (paired t-test p < alpha, over ≥ 2 seeds), those significantly below, and the
 * best point with its difference and interval. With one seed it says no test was possible.
 */
export function describeFrontier(rows: SummaryRow[], frozen: number, alpha = 0.05): string {
  const findings = frontierFindings(rows, frozen);
  if (findings.length === 0) return "No frontier point ran.";
  const level = `${Number((100 * alpha).toPrecision(3))} %`;
  const pct = (v: number) => `${signed(v, 2)} points`;
  const ci = (f: FrontierFinding) =>
    Number.isFinite(f.low) ? ` (95 % CI ${signed(f.low, 2)} to ${signed(f.high, 2)})` : "";
  const name = (f: FrontierFinding) =>
    `${f.method} at ε=${f.targetEpsilon} (spent ${formatEpsilon(f.spentEpsilon)})`;
  const lines = [`Frozen model: ${frozen.toFixed(2)} % test accuracy.`];
  const n = Math.max(...findings.map((f) => f.seeds));
  for (const regime of [...new Set(findings.map((f) => f.regime))]) {
    const mine = findings.filter((f) => f.regime === regime);
    const best = mine.reduce((a, b) => (b.difference > a.difference ? b : a));
    const tested = mine.filter((f) => f.seeds >= 2 && Number.isFinite(f.tTestP));
    const above = tested.filter((f) => f.tTestP < alpha && f.difference > 0);
    const below = tested.filter((f) => f.tTestP < alpha && f.difference < 0);
    const list = (fs: FrontierFinding[]) =>
      fs.map((f) => `${name(f)} ${pct(f.difference)}${ci(f)}, p ${formatP(f.tTestP)}`).join("; ");
    const parts = [
      `${regime}: best ${name(best)}, ${best.accuracy.toFixed(2)} %, ${
        pct(best.difference)
      } against the frozen model${ci(best)}.`,
    ];
    if (tested.length === 0) {
      parts.push("One seed: no interval and no test.");
    } else {
      parts.push(
        above.length === 0
          ? `No point is significantly above the frozen model at ${level} (paired t-test).`
          : `Significantly above the frozen model at ${level}: ${above.length} of ` +
            `${tested.length} (${list(above)}); confirmed by the exact sign-flip test: ` +
            `${above.filter((f) => f.signFlipP < alpha).length}.`,
      );
      parts.push(
        below.length === 0
          ? `None significantly below.`
          : `Significantly below: ${below.length} of ${tested.length} (${list(below)}).`,
      );
    }
    lines.push(`- ${parts.join(" ")}`);
  }
  if (n >= 2) {
    lines.push(
      `Each point is tested on its own against the frozen model, without correction for the ` +
        `${findings.length} tests: with no real difference each still comes out significant ` +
        `with probability ${level}.`,
    );
  }
  lines.push(seedsCaveat(n));
  return lines.join("\n");
}

/**
 * The frontier as a table: method × regime × target ε, with the ε spent, the accuracy (mean ±
 * 95 % CI half-width over seeds) and its difference from the frozen model with its interval and
 * paired t-test p-value.
 */
export function frontierTable(
  rows: SummaryRow[],
  frozen: number,
): { columns: string[]; rows: (string | number)[][] } {
  const byLabel = new Map(rows.map((r) => [r.label, r]));
  return {
    columns: [
      "regime",
      "method",
      "target ε",
      "spent ε",
      "σ",
      "seeds",
      "acc ± 95 % CI",
      "− frozen [95 % CI]",
      "p (t)",
      "p (sign-flip)",
    ],
    rows: frontierFindings(rows, frozen).map((f) => {
      const r = byLabel.get(f.label)!;
      const hw = halfWidth(r);
      return [
        f.regime,
        f.method,
        f.targetEpsilon,
        formatEpsilon(f.spentEpsilon),
        r.noiseMultiplier === null ? "–" : Number(r.noiseMultiplier.toPrecision(3)),
        f.seeds,
        `${f.accuracy.toFixed(2)}${hw === null ? "" : ` ± ${hw.toFixed(2)}`}`,
        `${signed(f.difference, 2)}${
          Number.isFinite(f.low) ? ` [${signed(f.low, 2)}, ${signed(f.high, 2)}]` : ""
        }`,
        Number.isFinite(f.tTestP) ? formatP(f.tTestP) : "–",
        f.seeds >= 2 ? formatP(f.signFlipP) : "–",
      ];
    }),
  };
}
