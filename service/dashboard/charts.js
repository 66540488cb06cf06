// SVG charts of the dashboard, written plainly (no library): line charts with bands and
// reference lines, and a polar histogram of azimuth bins.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#e4572e", "#17bebb", "#4b7bec", "#ffc914", "#a259ff", "#76b041", "#ff8c42", "#d7263d"];

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** Round tick values covering [lo, hi], about `count` of them. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(12));
  return { ticks, lo: Math.min(lo, ticks[0]), hi: Math.max(hi, ticks[ticks.length - 1]) };
}

function format(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 1e4 || abs < 1e-3) return value.toExponential(1);
  return String(+value.toPrecision(3));
}

/**
 * A line chart. `series`: [{name, color, points: [[x, y]], dash, band: [[x, lo, hi]]}];
 * `hlines`: [{y, label, color, dash}]. Empty data draws the axes and `empty` as a note.
 */
export function lineChart({ series = [], hlines = [], xLabel = "", yLabel = "", width = 440, height = 230,
                            empty = "no data yet", integerX = false, id }) {
  const named = series.filter((s) => s.name);
  const margin = { left: 52, right: 12, top: named.length ? 26 : 12, bottom: 40 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const xs = [], ys = [];
  for (const s of series) {
    for (const [x, y] of s.points) { if (Number.isFinite(y)) { xs.push(x); ys.push(y); } }
    for (const [x, lo, hi] of s.band || []) { xs.push(x); ys.push(lo, hi); }
  }
  for (const line of hlines) if (Number.isFinite(line.y)) ys.push(line.y);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", id,
                            "aria-label": yLabel });
  const xDomain = niceTicks(xs.length ? Math.min(...xs) : 0, xs.length ? Math.max(...xs) : 1, 6);
  if (integerX) xDomain.ticks = xDomain.ticks.filter((t) => Number.isInteger(t));
  const yDomain = niceTicks(ys.length ? Math.min(...ys) : 0, ys.length ? Math.max(...ys) : 1, 5);
  const X = (x) => margin.left + ((x - xDomain.lo) / (xDomain.hi - xDomain.lo)) * plotW;
  const Y = (y) => margin.top + plotH - ((y - yDomain.lo) / (yDomain.hi - yDomain.lo)) * plotH;

  const grid = svg("g", { class: "grid" });
  for (const t of yDomain.ticks) {
    grid.append(svg("line", { x1: margin.left, x2: margin.left + plotW, y1: Y(t), y2: Y(t) }));
    grid.append(svg("text", { x: margin.left - 6, y: Y(t) + 4, "text-anchor": "end" }, format(t)));
  }
  for (const t of xDomain.ticks) {
    grid.append(svg("text", { x: X(t), y: margin.top + plotH + 16, "text-anchor": "middle" }, format(t)));
  }
  grid.append(svg("line", { class: "axis", x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH,
                            y2: margin.top + plotH }));
  grid.append(svg("text", { class: "label", x: margin.left + plotW / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  grid.append(svg("text", { class: "label", x: 12, y: margin.top + plotH / 2, "text-anchor": "middle",
                            transform: `rotate(-90 12 ${margin.top + plotH / 2})` }, yLabel));
  root.append(grid);

  if (!xs.length) {
    root.append(svg("text", { class: "empty", x: margin.left + plotW / 2, y: margin.top + plotH / 2,
                              "text-anchor": "middle" }, empty));
    return root;
  }
  for (const s of series) {
    if (s.band && s.band.length) {
      const upper = s.band.map(([x, , hi]) => `${X(x)},${Y(hi)}`);
      const lower = s.band.slice().reverse().map(([x, lo]) => `${X(x)},${Y(lo)}`);
      root.append(svg("polygon", { points: [...upper, ...lower].join(" "), fill: s.color, "fill-opacity": 0.15 }));
    }
  }
  const labelled = [];
  for (const line of hlines) {
    if (!Number.isFinite(line.y)) continue;
    root.append(svg("line", { x1: margin.left, x2: margin.left + plotW, y1: Y(line.y), y2: Y(line.y),
                              stroke: line.color || "#888", "stroke-dasharray": line.dash || "5 4" }));
    // Labels of lines close together go on alternate sides, so they do not overprint.
    const crowded = labelled.some((y) => Math.abs(y - Y(line.y)) < 12);
    const below = crowded || Y(line.y) < margin.top + 12;
    root.append(svg("text", { class: "hline", x: margin.left + plotW - 4, y: Y(line.y) + (below ? 12 : -4),
                              "text-anchor": "end", fill: line.color || "#888" }, line.label));
    labelled.push(Y(line.y));
  }
  for (const s of series) {
    const points = s.points.filter(([, y]) => Number.isFinite(y));
    if (!points.length) continue;
    root.append(svg("polyline", { points: points.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), fill: "none",
                                  stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash }));
    if (s.markers !== false && points.length < 60) {
      for (const [x, y] of points) root.append(svg("circle", { cx: X(x), cy: Y(y), r: 3, fill: s.color }));
    }
  }
  if (named.length) {  // one row above the plot
    const legend = svg("g", { class: "legend" });
    let x = margin.left;
    for (const s of named) {
      legend.append(svg("line", { x1: x, x2: x + 16, y1: 10, y2: 10, stroke: s.color, "stroke-width": 2,
                                  "stroke-dasharray": s.dash }));
      legend.append(svg("text", { x: x + 20, y: 14 }, s.name));
      x += 32 + 5.6 * s.name.length;
    }
    root.append(legend);
  }
  return root;
}

/**
 * A polar histogram: one wedge per azimuth bin, radius proportional to its probability
 * (0 degrees at the top, clockwise); the dashed circle is the uniform distribution.
 */
export function polarChart({ probs, edges, color, title, scaleMax, size = 210, id, iteration }) {
  const centre = size / 2;
  const radius = size / 2 - 24;
  const bins = probs.length;
  const top = Math.max(scaleMax || 0, ...probs, 1.5 / bins);
  const R = (p) => radius * Math.sqrt(p / top); // area, not radius, proportional to probability
  const point = (deg, r) => {
    const a = ((deg - 90) * Math.PI) / 180;
    return [centre + r * Math.cos(a), centre + r * Math.sin(a)];
  };
  const root = svg("svg", { viewBox: `0 0 ${size} ${size + 18}`, class: "chart polar", role: "img", id,
                            "data-iteration": iteration, "data-bins": bins, "aria-label": title });
  for (const deg of [0, 90, 180, 270]) {
    const [x1, y1] = point(deg, 0);
    const [x2, y2] = point(deg, radius);
    root.append(svg("line", { class: "spoke", x1, y1, x2, y2 }));
    const [lx, ly] = point(deg, radius + 12);
    root.append(svg("text", { class: "tick", x: lx, y: ly + 4, "text-anchor": "middle" }, `${deg}°`));
  }
  probs.forEach((p, k) => {
    const from = edges ? edges[k] : (360 * k) / bins;
    const to = edges ? edges[k + 1] : (360 * (k + 1)) / bins;
    const r = R(p);
    const [x1, y1] = point(from, r);
    const [x2, y2] = point(to, r);
    const large = to - from > 180 ? 1 : 0;
    const wedge = svg("path", { d: `M ${centre} ${centre} L ${x1} ${y1} A ${r} ${r} 0 ${large} 1 ${x2} ${y2} Z`,
                                fill: color, "fill-opacity": 0.75, stroke: "#fff", "stroke-width": 1 });
    wedge.append(svg("title", {}, `${Math.round(from)}°–${Math.round(to)}°: ${(100 * p).toFixed(1)} %`));
    root.append(wedge);
  });
  root.append(svg("circle", { class: "uniform", cx: centre, cy: centre, r: R(1 / bins) }));
  root.append(svg("text", { class: "title", x: centre, y: size + 14, "text-anchor": "middle" }, title));
  return root;
}

/** Density of a log-normal given its median and 10/90 % quantiles, at `xs`. */
export function logNormalDensity(median, q90, xs) {
  const sigma = Math.max(Math.log(q90 / median) / 1.2815515655, 1e-6);
  return xs.map((x) => [x, Math.exp(-((Math.log(x) - Math.log(median)) ** 2) / (2 * sigma ** 2))
                          / (x * sigma * Math.sqrt(2 * Math.PI))]);
}

/** Density of a normal distribution at `xs`. */
export function normalDensity(mean, std, xs) {
  const s = Math.max(std, 1e-6);
  return xs.map((x) => [x, Math.exp(-((x - mean) ** 2) / (2 * s * s)) / (s * Math.sqrt(2 * Math.PI))]);
}

export function linspace(lo, hi, count) {
  return Array.from({ length: count }, (_, i) => lo + ((hi - lo) * i) / (count - 1));
}
