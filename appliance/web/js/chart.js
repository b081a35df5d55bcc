// Line charts by training step, drawn with uPlot (vendored). Series may have gaps (eval loss is
// measured every eval_steps only): each series is a map step -> value, aligned on the union of steps.
import uPlot from "../vendor/uPlot.esm.js";

const COLORS = ["#1f5fcc", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490"];

export function align(seriesMaps) {
  const steps = [...new Set(seriesMaps.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
  return [steps, ...seriesMaps.map((m) => steps.map((s) => (m.has(s) ? m.get(s) : null)))];
}

// 3 significant digits: a learning rate of 0.00095 stays readable (uPlot's default rounds it to 0.001).
const short = (v) => (v == null ? "" : String(Number(v.toPrecision(3))));

export class StepChart {
  // names: series labels; el: the container; yLabel: the axis name.
  constructor(el, { title, names, yLabel, width = 560, height = 220 }) {
    this.maps = names.map(() => new Map());
    const series = [{ label: "step" }, ...names.map((n, i) => ({
      label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { show: true, size: 5 } }))];
    this.plot = new uPlot({ title, width, height, series, scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: yLabel, size: 60, values: (_u, ticks) => ticks.map(short) }] },
    align(this.maps), el);
    this.count = 0;
  }

  add(seriesIndex, step, value) {
    if (value == null || Number.isNaN(value)) return;
    this.maps[seriesIndex].set(step, value);
    this.count += 1;
    this.plot.setData(align(this.maps));
    this.plot.root.dataset.points = String(this.count);  // tests and screen readers: how many points are drawn
  }

  destroy() { this.plot.destroy(); }
}
