// Evaluations: score a model on an eval set (a worker job), and compare two side by side: per
// metric the change and verdict, per question both answers next to the reference.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { button, card, empty, errorText, field, h, heading, message, num, poller, select, table } from "../ui.js";

const METRICS = ["nll", "rouge_l", "token_f1", "exact_match", "retention"];
let stop = () => {};

export function hide() { stop(); }

export async function show(section) {
  hide();
  const [datasets, ggufs, adapters, models] = await Promise.all([api("/api/datasets"), api("/api/artifacts?kind=gguf"),
    api("/api/artifacts?kind=gguf-adapter"), api("/api/models")]);
  const arts = [...ggufs, ...adapters];
  const listBox = h("div", { id: "eval-list" }), compareBox = h("div", { id: "compare" });
  section.replaceChildren(form(datasets, arts, models, listBox, compareBox), listBox, compareBox);
  await render(listBox, compareBox);
  stop = poller(async () => { if (listBox.querySelector("[data-status=queued],[data-status=running]")) await render(listBox, compareBox); }, 2000);
}

function form(datasets, arts, models, listBox, compareBox) {
  const sets = datasets.filter((d) => d.purpose === "eval");
  if (!sets.length) return card(heading("evals.new"), empty("evals.no_set"));
  const model = select([...arts.filter((a) => a.status === "ready").map((a) => [`artifact:${a.id}`, a.name || a.id]),
    ...models.map((m) => [`model:${m.id}`, m.id])]);
  const set = select(sets.map((d) => [d.id, d.name]));
  model.id = "eval-model"; set.id = "eval-set";
  const out = h("p", { id: "eval-result", role: "status" });
  const f = h("form", { id: "eval-form", class: "row" }, field("evals.model", model), field("evals.set", set),
    h("button", { type: "submit", class: "primary", text: t("evals.start") }));
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [what, id] = model.value.split(/:(.*)/s);
    try {
      const e = await api("/api/evaluations", { method: "POST",
        json: { dataset_id: set.value, [what === "artifact" ? "artifact_id" : "base_model_id"]: id } });
      message(out, t("evals.queued", { id: e.id }), "ok");
      await render(listBox, compareBox);
    } catch (e) { message(out, errorText(e), "error"); }
  });
  return card(heading("evals.new"), f, out);
}

async function render(listBox, compareBox) {
  const evals = await api("/api/evaluations");
  if (!evals.length) { listBox.replaceChildren(card(heading("evals.heading"), empty("evals.empty"))); return; }
  const stopButton = (e) => button("runs.cancel", async () => {  // queued or running: it ends failed, "cancelled by ..."
    try { await api(`/api/evaluations/${e.id}/cancel`, { method: "POST" }); } catch { /* ended meanwhile */ }
    await render(listBox, compareBox);
  }, "danger");
  const rows = evals.map((e) => [e.model, h("span", { class: "tag", text: t(`status.${e.status}`) }),
    `${e.questions_done} / ${e.questions_total ?? "?"}`, ...METRICS.map((m) => num(e.metrics[m])),
    ["queued", "running"].includes(e.status) ? stopButton(e) : e.error || ""]);
  listBox.replaceChildren(card(heading("evals.heading"), table(["evals.model", "evals.status", "evals.progress",
    ...METRICS.map((m) => `metric.${m}`), "evals.error"], rows, (i) => ({ "data-id": evals[i].id, "data-status": evals[i].status }))));
  const done = evals.filter((e) => e.status === "succeeded");
  if (compareBox.dataset.ready === String(done.length)) return;
  compareBox.dataset.ready = String(done.length);
  if (done.length < 2) { compareBox.replaceChildren(card(heading("evals.compare"), empty("evals.compare_empty"))); return; }
  const options = done.map((e) => [e.id, `${e.model} (${e.id})`]);
  // By default the question a user asks: did the fine-tune beat the base model? The newest evaluation of a
  // base model is the baseline, the newest of a fine-tune on the same eval set the candidate.
  const baseE = done.find((e) => e.base_model_id) || done[1];
  const candE = done.find((e) => e !== baseE && e.artifact_id && e.dataset_id === baseE.dataset_id)
    || done.find((e) => e !== baseE);
  const base = select(options, baseE.id), cand = select(options, candE.id);
  base.id = "cmp-baseline"; cand.id = "cmp-candidate";
  const result = h("div", { id: "compare-result" });
  const f = h("form", { id: "compare-form", class: "row" }, field("evals.baseline", base), field("evals.candidate", cand),
    h("button", { type: "submit", class: "primary", text: t("evals.compare_go") }));
  f.addEventListener("submit", async (ev) => { ev.preventDefault(); await compare(base.value, cand.value, result); });
  compareBox.replaceChildren(card(heading("evals.compare"), f, result));
}

async function compare(baseline, candidate, box) {
  try {
    const c = await api(`/api/evaluations/compare?baseline=${baseline}&candidate=${candidate}`);
    box.replaceChildren(
      table(["evals.metric", "evals.baseline", "evals.candidate", "evals.change", "evals.verdict"],
        c.metrics.map((m) => [t(`metric.${m.metric}`), num(m.baseline), num(m.candidate),
          `${num(m.diff)} [${num(m.low)}, ${num(m.high)}]`, h("span", { class: `verdict-${m.verdict.replace(/ /g, "-")}`, text: t(`verdict.${m.verdict.replace(/ /g, "_")}`) })])),
      heading("evals.questions", "h3"),
      table(["evals.question", "evals.baseline_answer", "evals.candidate_answer", "evals.reference"],
        c.questions.slice(0, 30).map((q) => [q.question, q.baseline_answer, q.candidate_answer, q.reference])));
  } catch (e) { box.replaceChildren(h("p", { class: "error", text: errorText(e) })); }
}
