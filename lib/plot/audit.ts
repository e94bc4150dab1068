/**
 * Figures and tables of the empirical privacy audit (`lib/fl/audit.ts`): the two cosine samples
 * of one audited run with their fitted Gaussians, and a table of estimates against the accounted
 * ε (notebook 07).
 *
 * @example
 * ```ts
 * import { auditTable, canaryFigure, describeAudits } from "./audit.ts";
 * const run = {
 *   seed: 1, accountedEpsilon: 6, nominalEpsilon: 6, verdict: "consistent" as const,
 *   testAccuracy: 0.5, separateVariances: { epsilon: 5, interval: [4, 6] as [number, number] },
 *   cosines: { inserted: [0.9, 1.1, 1.0], held: [0.1, -0.1, 0.0] },
 *   estimate: {
 *     epsilon: 5, interval: [4, 6] as [number, number], delta: 1e-5, mu: 1, muStdErr: 0.1,
 *     inserted: { mean: 1, std: 0.1 }, held: { mean: 0, std: 0.1 },
 *   },
 * };
 * canaryFigure(run, "LoRA · strict").data.length; // 4: two samples, two fitted Gaussians
 * describeAudits([{ label: "LoRA · strict", audit: {
 *   method: "LoRA", space: "factor", canaries: 3, delta: 1e-5, runs: [run], combined: null,
 * } }]); // "… empirical ε 5.000 [4.000, 6.000], accounted 6.000 — the accounted ε lies within …"
 * auditTable([{ label: "LoRA · strict", audit: {
 *   method: "LoRA", space: "factor", canaries: 3, delta: 1e-5, runs: [run], combined: null,
 * } }]).rows.length; // 1
 * ```
 * @module
 */
import type { AuditedRun, ConfigAudit } from "../fl/audit.ts";
import type { Figure, Trace } from "./figures.ts";

/**
 * The inserted and the held-out cosines of one audited run as overlaid histograms (shared bins),
 * with the pooled-variance Gaussians the estimate fitted, scaled to counts.
 */
export function canaryFigure(run: AuditedRun, title: string, bins = 30): Figure {
  const { inserted, held } = run.cosines;
  const all = [...inserted, ...held];
  const lo = Math.min(...all), hi = Math.max(...all);
  const width = hi > lo ? (hi - lo) / bins : 1;
  const centres = Array.from({ length: bins }, (_, i) => lo + (i + 0.5) * width);
  const counts = (xs: number[]) => {
    const c = new Array(bins).fill(0);
    for (const x of xs) c[Math.min(bins - 1, Math.floor((x - lo) / width))]++;
    return c;
  };
  const est = run.estimate;
  // The estimate's pooled spread: both fits drawn with it, as the estimate uses them.
  const ni = inserted.length, nh = held.length;
  const s = Math.sqrt(
    ((ni - 1) * est.inserted.std ** 2 + (nh - 1) * est.held.std ** 2) / (ni + nh - 2),
  );
  const grid = Array.from({ length: 200 }, (_, i) => lo + (i / 199) * (hi - lo));
  const density = (mean: number, n: number) =>
    grid.map((x) =>
      n * width * Math.exp(-0.5 * ((x - mean) / s) ** 2) / (s * Math.sqrt(2 * Math.PI))
    );
  const bar = (name: string, ys: number[], color: string): Trace => ({
    type: "bar",
    name,
    x: centres,
    y: ys,
    marker: { color, opacity: 0.55 },
  });
  const fit = (name: string, mean: number, n: number, color: string): Trace => ({
    type: "scatter",
    mode: "lines",
    name,
    x: grid,
    y: density(mean, n),
    line: { color, width: 2 },
  });
  const accounted = run.accountedEpsilon === null ? "no DP" : run.accountedEpsilon.toFixed(2);
  return {
    data: [
      bar(`held out (${nh})`, counts(held), "#7f7f7f"),
      bar(`inserted (${ni})`, counts(inserted), "#d62728"),
      fit("held-out fit", est.held.mean, nh, "#4d4d4d"),
      fit("inserted fit", est.inserted.mean, ni, "#a50f15"),
    ],
    layout: {
      title: {
        text: `${title}, seed ${run.seed}: empirical ε ${est.epsilon.toFixed(2)} [${
          est.interval[0].toFixed(2)
        }, ${est.interval[1].toFixed(2)}], accounted ${accounted}`,
        x: 0.01,
        xanchor: "left",
      },
      barmode: "overlay",
      bargap: 0,
      xaxis: { title: { text: "cosine with the final update" }, exponentformat: "power" },
      yaxis: { title: { text: "canaries" } },
      legend: { orientation: "h", y: -0.25 },
      margin: { t: 70, r: 20, b: 90, l: 70 },
      height: 380,
      template: "plotly_white",
    },
  };
}

/**
 * One row per audited run, and one per configuration for the estimate from all its seeds: the ε
 * accounted, the ε estimated with its 95 % interval, and the verdict.
 */
export function auditTable(
  audits: readonly { label: string; audit: ConfigAudit }[],
): { columns: string[]; rows: (string | number)[][] } {
  const f = (x: number | null) => x === null ? "–" : x.toFixed(3);
  const rows: (string | number)[][] = [];
  for (const { label, audit } of audits) {
    for (const r of audit.runs) {
      rows.push([
        label,
        audit.space,
        audit.canaries,
        String(r.seed),
        f(r.accountedEpsilon),
        f(r.estimate.epsilon),
        `[${f(r.estimate.interval[0])}, ${f(r.estimate.interval[1])}]`,
        r.verdict,
      ]);
    }
    const c = audit.combined;
    if (c) {
      rows.push([
        label,
        audit.space,
        audit.canaries,
        `all ${c.runs}`,
        f(c.accountedEpsilon),
        f(c.epsilon),
        `[${f(c.interval[0])}, ${f(c.interval[1])}]`,
        c.verdict,
      ]);
    }
  }
  return {
    columns: [
      "point",
      "canary space",
      "canaries",
      "seed",
      "accounted ε",
      "empirical ε",
      "95 % interval",
      "verdict",
    ],
    rows,
  };
}

/**
 * The audit's findings in words, one line per configuration: the estimate (from all seeds when
 * there are several) against the accounted ε, and what the verdict means.
 */
export function describeAudits(audits: readonly { label: string; audit: ConfigAudit }[]): string {
  const lines = audits.map(({ label, audit }) => {
    const c = audit.combined;
    const one = audit.runs[0];
    const [eps, lo, hi, accounted, verdict, what] = c
      ? [
        c.epsilon,
        c.interval[0],
        c.interval[1],
        c.accountedEpsilon,
        c.verdict,
        `all ${c.runs} seeds`,
      ]
      : [
        one.estimate.epsilon,
        one.estimate.interval[0],
        one.estimate.interval[1],
        one.accountedEpsilon,
        one.verdict,
        audit.runs.length === 1 ? `seed ${one.seed}` : `${audit.runs.length} seeds, each its own ε`,
      ];
    const acc = accounted === null ? "no accounted ε" : `accounted ${accounted.toFixed(3)}`;
    const meaning = verdict === "above"
      ? "ABOVE the accounted ε: a leak, or a sampling tail (rerun with more canaries or seeds)"
      : verdict === "consistent"
      ? (accounted !== null && hi < accounted
        ? "below the accounted ε: this attack does not reach it"
        : "the accounted ε lies within the interval")
      : "nothing to compare";
    const nominal = one.nominalEpsilon;
    const aboveNominal = nominal !== null && lo > nominal && accounted !== nominal
      ? `; and above the nominal ε ${nominal}: the nominal figure is not what the run spends`
      : "";
    return `- ${label} (${audit.canaries} canaries in ${audit.space} space, ${what}): empirical ε ` +
      `${eps.toFixed(3)} [${lo.toFixed(3)}, ${hi.toFixed(3)}], ${acc} — ${meaning}${aboveNominal}.`;
  });
  return `Empirical audit (one-shot canaries, δ = ${audits[0]?.audit.delta ?? "–"}):\n` +
    lines.join("\n");
}
