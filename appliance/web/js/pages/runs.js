// Runs: the list (with an overlay of the selected runs' loss curves), the new-run form from the
// presets with the pre-flight estimate refreshed as the keys change, and a page per run (run_view.js).
import { api } from "../api.js";
import { StepChart } from "../chart.js";
import { t } from "../i18n.js";
import { button, card, empty, errorText, field, h, heading, message, num, poller, select, table } from "../ui.js";
import * as view from "./run_view.js";

const KEYS = [["max_steps", "int"], ["learning_rate", "float"], ["lora_rank", "int"], ["cutoff_len", "int"],
  ["per_device_train_batch_size", "int"], ["val_size", "float"]];
let root = null, timer = null, overlay = null, stopPolling = () => {};

export function hide() {
  view.hide(); clearTimeout(timer); stopPolling(); stopPolling = () => {};
  if (overlay) overlay.destroy(); overlay = null;
}

export async function show(section, [id] = []) {
  root = section;
  hide();
  if (id) return view.show(section, id);
  const [runs, datasets, presets] = await Promise.all([api("/api/runs"), api("/api/datasets"), api("/api/presets")]);
  const listBox = h("div", { id: "run-list" }, list(runs));
  section.replaceChildren(await form(datasets, presets), listBox, h("div", { id: "overlay" }));
  // While a run is queued or running, its row follows it (the boxes ticked for the overlay stay ticked).
  stopPolling = poller(async () => {
    if (!listBox.querySelector("[data-status=queued],[data-status=running]")) return;
    const ticked = new Set([...listBox.querySelectorAll("input:checked")].map((b) => b.value));
    listBox.replaceChildren(list(await api("/api/runs"), ticked));
  }, 3000);
}

function list(runs, ticked = new Set()) {
  if (!runs.length) return card(heading("runs.heading"), empty("runs.empty"));
  const boxes = runs.map((r) => h("input", { type: "checkbox", value: r.id, "aria-label": t("runs.pick", { id: r.id }) }));
  boxes.forEach((b) => { b.checked = ticked.has(b.value); });
  const rows = runs.map((r, i) => [boxes[i], h("a", { href: `#runs/${r.id}`, text: r.name || r.id }),
    h("span", { class: "tag", text: t(`status.${r.status}`) }),
    h("span", {}, h("progress", { max: r.max_steps || 1, value: r.step, "aria-label": t("runs.progress") }),
      ` ${r.step} / ${r.max_steps ?? "?"}`), num(r.loss, 4), r.preset || "", r.error || ""]);
  const compare = button("runs.overlay", () => drawOverlay(boxes.filter((b) => b.checked).map((b) => b.value)));
  return card(heading("runs.heading"), table(["", "runs.name", "runs.status", "runs.progress", "runs.loss",
    "runs.preset", "runs.error"], rows, (i) => ({ "data-id": runs[i].id, "data-status": runs[i].status })),
    h("p", {}, compare));
}

async function drawOverlay(ids) {
  const box = root.querySelector("#overlay");
  if (overlay) overlay.destroy();
  box.replaceChildren();
  if (ids.length < 2) { box.append(card(h("p", { class: "error", text: t("runs.overlay_pick") }))); return; }
  const el = h("div", { id: "overlay-chart" });
  box.append(card(heading("runs.overlay_heading"), el));
  overlay = new StepChart(el, { title: t("runs.loss"), names: ids, yLabel: t("runs.loss") });
  const all = await Promise.all(ids.map((id) => api(`/api/runs/${id}/metrics`)));
  all.forEach((metrics, i) => metrics.filter((m) => m.kind === "train").forEach((m) => overlay.add(i, m.step, m.loss)));
}

async function form(datasets, presets) {
  if (!datasets.length) return card(heading("runs.new"), empty("runs.no_datasets"));
  const names = Object.keys(presets);
  const dataset = select(datasets.filter((d) => d.purpose !== "eval").concat(datasets.filter((d) => d.purpose === "eval"))
    .map((d) => [d.id, `${d.name} (${d.rows})`]));
  const preset = select(names.map((p) => [p, p]), names.includes("lora-cpu") ? "lora-cpu" : names[0]);
  dataset.id = "run-dataset"; preset.id = "run-preset";
  const inputs = Object.fromEntries(KEYS.map(([k]) => [k, h("input", { id: `run-${k}`, inputmode: "decimal", size: 8 })]));
  const name = h("input", { id: "run-name", size: 16 });
  const estimate = h("p", { id: "estimate", role: "status", "aria-live": "polite" });
  const result = h("p", { id: "run-result", role: "status" });
  const fill = () => {
    const p = presets[preset.value] || {};
    for (const [k] of KEYS) inputs[k].placeholder = p[k] != null ? String(p[k]) : t("runs.default");
  };
  const body = () => {
    const config = {};
    for (const [k, kind] of KEYS) {
      const v = inputs[k].value.trim();
      if (v) config[k] = kind === "int" ? parseInt(v, 10) : parseFloat(v);
    }
    return { dataset_id: dataset.value, preset: preset.value, config, name: name.value.trim() || null };
  };
  const refresh = () => { clearTimeout(timer); timer = setTimeout(() => estimateNow(body(), estimate), 300); };
  [dataset, preset, ...Object.values(inputs)].forEach((el) => el.addEventListener("input", refresh));
  preset.addEventListener("change", fill);
  fill(); refresh();
  const start = h("button", { type: "submit", class: "primary", text: t("runs.start") });
  const f = h("form", { id: "run-form", class: "row" }, field("runs.dataset", dataset), field("runs.preset", preset),
    field("runs.name", name), KEYS.map(([k]) => field(`runs.key_${k}`, inputs[k])), start);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (start.disabled) return;  // a double click queues one run, not two
    start.disabled = true;
    try {
      const r = await api("/api/runs", { method: "POST", json: body() });
      location.hash = `runs/${r.id}`;
    } catch (e) { message(result, errorText(e), "error"); }
    finally { start.disabled = false; }
  });
  return card(heading("runs.new"), f, estimate, result);
}

async function estimateNow(body, out) {
  try {
    const e = await api("/api/runs/estimate", { method: "POST", json: body });
    const text = t(e.fits ? "runs.estimate_fits" : "runs.estimate_no", {
      mem: (e.peak_memory_mb / 1024).toFixed(1), avail: ((e.available_memory_mb || 0) / 1024).toFixed(1),
      steps: e.steps, minutes: Math.max(1, Math.round(e.seconds / 60)), device: e.device });
    message(out, text, e.fits ? "ok" : "error");
  } catch (e) { message(out, errorText(e), "error"); }
}
