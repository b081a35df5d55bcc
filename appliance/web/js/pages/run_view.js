// One run: progress and ETA, loss / eval loss, learning rate, tokens/s and memory drawn as points
// arrive over Server-Sent Events, the sample answers of each eval step, the log tail, cancel/retry.
import { api } from "../api.js";
import { StepChart } from "../chart.js";
import { t } from "../i18n.js";
import { button, card, errorText, h, message, num, parseTime, table } from "../ui.js";

let source = null, charts = [], refreshing = false, shown = 0;

export function hide() {
  shown += 1;  // a show() still awaiting its first answers gives up: another view (or none) is current
  if (source) source.close();
  source = null; charts.forEach((c) => c.destroy()); charts = [];
}

export async function show(section, id) {
  hide();
  const mine = shown;
  const run = await api(`/api/runs/${id}`);
  if (mine !== shown) return;
  const head = h("div", { id: "run-head" }), note = h("p", { id: "run-note", role: "status" });
  const plots = ["loss", "lr", "speed", "memory"].map((k) => h("div", { id: `chart-${k}` }));
  const samples = h("div", { id: "samples" }), log = h("pre", { id: "log-tail", tabindex: "0" });
  section.replaceChildren(
    card(h("p", {}, h("a", { href: "#runs", text: t("runs.back") })), h("h2", { text: run.name || run.id }), head, note),
    card(h("div", { class: "grid2" }, plots)),
    card(h("h3", { text: t("runs.samples") }), samples), card(h("h3", { text: t("runs.log") }), log));
  charts = [
    new StepChart(plots[0], { title: t("runs.loss"), names: [t("runs.train_loss"), t("runs.eval_loss")], yLabel: t("runs.loss") }),
    new StepChart(plots[1], { title: t("runs.lr"), names: [t("runs.lr")], yLabel: "lr" }),
    new StepChart(plots[2], { title: t("runs.speed"), names: [t("runs.speed")], yLabel: "tok/s" }),
    new StepChart(plots[3], { title: t("runs.memory"), names: [t("runs.memory")], yLabel: "MB" }),
  ];
  renderHead(head, note, run, () => show(section, id));
  await details(id, samples, log);
  if (mine !== shown) return;
  source = new EventSource(`/api/runs/${id}/events`);
  source.addEventListener("metric", (ev) => {
    const m = JSON.parse(ev.data);
    if (m.kind === "eval") { charts[0].add(1, m.step, m.loss); return; }
    charts[0].add(0, m.step, m.loss); charts[1].add(0, m.step, m.learning_rate);
    charts[2].add(0, m.step, m.tokens_per_s); charts[3].add(0, m.step, m.memory_mb);
  });
  source.addEventListener("status", async (ev) => {
    const s = JSON.parse(ev.data);
    const fresh = await api(`/api/runs/${id}`);
    if (mine !== shown) return;
    renderHead(head, note, fresh, () => show(section, id));
    if (!refreshing) { refreshing = true; try { await details(id, samples, log); } finally { refreshing = false; } }
    if (["succeeded", "failed", "cancelled"].includes(s.status) && source) source.close();
  });
}

function eta(run) {
  if (run.status !== "running" || !run.started_at || !run.step || !run.max_steps) return "";
  const elapsed = (Date.now() - parseTime(run.started_at)) / 1000;
  const left = (elapsed / run.step) * (run.max_steps - run.step);
  return t("runs.eta", { minutes: Math.max(1, Math.round(left / 60)) });
}

// `reopen`: shows the run again from the start (after a retry: its live updates had ended with the cancel).
function renderHead(head, note, run, reopen) {
  const bar = h("progress", { max: run.max_steps || 1, value: run.step, "aria-label": t("runs.progress") });
  const actions = h("p", { class: "row" });
  if (["queued", "running"].includes(run.status)) actions.append(button("runs.cancel", () => act(run, "cancel", head, note, reopen), "danger"));
  if (["failed", "cancelled"].includes(run.status)) actions.append(button("runs.retry", () => act(run, "retry", head, note, reopen)));
  const e = run.estimate;
  head.replaceChildren(
    h("p", { id: "run-status" }, h("span", { class: "tag", text: t(`status.${run.status}`) }),
      ` ${t("runs.step_of", { step: run.step, max: run.max_steps ?? "?" })} ${eta(run)}`,
      run.loss != null ? ` · ${t("runs.loss")} ${num(run.loss, 4)}` : ""),
    bar,
    e ? h("p", { class: "muted", text: t("runs.estimate_fits", { mem: (e.peak_memory_mb / 1024).toFixed(1),
      avail: ((e.available_memory_mb || 0) / 1024).toFixed(1), steps: e.steps,
      minutes: Math.max(1, Math.round(e.seconds / 60)), device: e.device }) }) : "",
    run.error ? h("p", { class: "error", text: run.error }) : "", notes(run), actions);
}

// Rows cut or left out at cutoff_len (each named in the title), and time spent waiting for kiosks.
function notes(run) {
  const d = run.data_report, out = [];
  if (d && (d.truncated_count || d.dropped_count)) {
    const rows = [...(d.truncated || []), ...(d.dropped || [])].map((n) => `${t("err.row", { n: n.row })}: ${n.detail}`);
    out.push(h("p", { class: "muted", title: rows.join("\n"), text: t("runs.cut",
      { truncated: d.truncated_count, dropped: d.dropped_count, cutoff: d.cutoff_len }) }));
  }
  if (run.paused_for_serving_s) out.push(h("p", { class: "muted", text: t("runs.waited", { s: run.paused_for_serving_s.toFixed(1) }) }));
  return out;
}

async function act(run, what, head, note, reopen) {
  head.querySelectorAll("button").forEach((b) => { b.disabled = true; });  // one cancel, one retry
  try {
    const fresh = await api(`/api/runs/${run.id}/${what}`, { method: "POST" });
    if (what === "retry") await reopen();  // queued again: follow it live, as when the page was opened
    else renderHead(head, note, fresh, reopen);
  } catch (e) { message(note, errorText(e), "error"); head.querySelectorAll("button").forEach((b) => { b.disabled = false; }); }
}

async function details(id, samplesBox, log) {
  const [samples, text] = await Promise.all([api(`/api/runs/${id}/samples`), api(`/api/runs/${id}/logs?lines=40`)]);
  samplesBox.replaceChildren(samples.length
    ? table(["runs.sample_step", "runs.sample_question", "runs.sample_answer", "runs.sample_reference"],
      samples.sort((a, b) => b.step - a.step || a.row - b.row).slice(0, 20)
        .map((s) => [String(s.step), s.question, s.answer, s.reference]))
    : h("p", { class: "muted", text: t("runs.no_samples") }));
  log.textContent = text || t("runs.no_log");
}
