// Datasets: drag-and-drop upload with progress, errors with file/line/field, stats with the token
// histogram against the cutoff, a preview as chat turns, mark as eval set, delete.
import { api, upload } from "../api.js";
import { t } from "../i18n.js";
import { button, card, empty, errorText, field, h, heading, message, select, table, when } from "../ui.js";

let root = null, selected = null;

export async function show(section, [id] = []) {
  root = section;
  if (id) selected = id;
  const file = h("input", { type: "file", id: "ds-file", accept: ".json,.jsonl,.csv,.tsv,.parquet" });
  const purpose = select([["train", t("datasets.purpose_train")], ["eval", t("datasets.purpose_eval")]], "train");
  purpose.id = "ds-purpose";
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
  const result = h("p", { id: "upload-result", role: "status" });
  const drop = h("div", { class: "drop", id: "drop" },
    h("p", { text: t("datasets.drop") }), field("datasets.file", file), field("datasets.purpose", purpose));
  const send = (f) => sendFile(f, purpose.value, progress, result);
  file.addEventListener("change", () => file.files[0] && send(file.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
  });
  section.replaceChildren(card(heading("datasets.upload"), drop, progress, result),
    h("div", { id: "ds-list" }), h("div", { id: "ds-detail" }));
  await list();
}

async function sendFile(file, purpose, progress, result) {
  const form = new FormData();
  form.append("file", file); form.append("purpose", purpose);
  progress.hidden = false; progress.value = 0;
  message(result, t("datasets.checking"));
  try {
    const { body: d, existed } = await upload("/api/datasets", form, (f) => { progress.value = f; });
    message(result, t(existed ? "datasets.existed" : "datasets.stored", { name: d.name, rows: d.rows }), "ok");
    selected = d.id;
    await list();
  } catch (e) {
    message(result, errorText(e), "error");
  } finally { progress.hidden = true; }
}

async function list() {
  const datasets = await api("/api/datasets");
  const box = root.querySelector("#ds-list");
  if (!datasets.length) { box.replaceChildren(card(empty("datasets.empty"))); return; }
  const rows = datasets.map((d) => {
    const s = d.token_stats[0];
    return [d.name, d.format, String(d.rows), String(d.turns),
      h("span", { class: "tag", text: t(`datasets.purpose_${d.purpose === "eval" ? "eval" : "train"}`) }),
      s ? `${s.min_tokens} / ${s.median_tokens} / ${s.max_tokens}` : "", s ? `${s.over_cutoff} (> ${s.cutoff_len})` : "",
      when(d.created_at), h("span", {}, button("datasets.open", () => { selected = d.id; detail(d); }))];
  });
  box.replaceChildren(card(heading("datasets.heading"),
    table(["datasets.name", "datasets.format", "datasets.rows", "datasets.turns", "datasets.purpose",
      "datasets.tokens", "datasets.over", "datasets.created", ""], rows, (i) => ({ "data-id": datasets[i].id }))));
  const chosen = datasets.find((d) => d.id === selected);
  if (chosen) await detail(chosen);
}

async function detail(d) {
  const box = root.querySelector("#ds-detail");
  const note = h("p", { role: "status" });
  const mark = d.purpose === "eval"
    ? button("datasets.mark_train", () => setPurpose(d, "train", note))
    : button("datasets.mark_eval", () => setPurpose(d, "eval", note));
  const del = button("datasets.delete", async () => {
    if (!confirm(t("datasets.confirm_delete", { name: d.name }))) return;
    try { await api(`/api/datasets/${d.id}`, { method: "DELETE" }); selected = null; box.replaceChildren(); await list(); }
    catch (e) { message(note, errorText(e), "error"); }
  }, "danger");
  const hist = h("div", { id: "histogram" }), preview = h("div", { id: "preview" });
  box.replaceChildren(card(h("h2", { text: d.name }), h("p", { class: "row" }, mark, del), note,
    h("div", { class: "grid2" }, h("div", {}, heading("datasets.histogram", "h3"), hist),
      h("div", {}, heading("datasets.preview", "h3"), preview))));
  const [histo, rows] = await Promise.all([api(`/api/datasets/${d.id}/histogram`), api(`/api/datasets/${d.id}/preview?n=5`)]);
  drawHistogram(hist, histo);
  preview.replaceChildren(...rows.rows.map((r, i) => h("div", { class: "conversation" },
    h("p", { class: "muted", text: t("datasets.row", { n: i + 1 }) }),
    ...r.messages.map((m) => h("div", { class: `turn ${m.role}`, title: m.role, text: m.content })))));
}

function drawHistogram(box, histo) {
  const most = Math.max(1, ...histo.bins.map((b) => b.rows));
  const bars = h("div", { class: "bars", role: "img",
    "aria-label": t("datasets.histogram_label", { over: histo.over_cutoff, cutoff: histo.cutoff_len }) },
  histo.bins.map((b) => h("span", { class: b.low >= histo.cutoff_len ? "over" : "", title: `${b.low}–${b.high}: ${b.rows}`,
    style: `height:${(100 * b.rows) / most}%` })));
  const axis = h("div", { class: "row muted", style: "justify-content:space-between" }, h("span", { text: "0" }),
    h("span", { text: t("datasets.tokens_axis", { n: histo.bins[histo.bins.length - 1].high }) }));
  box.replaceChildren(bars, axis, h("p", { class: "muted", id: "hist-summary",
    text: t("datasets.histogram_label", { over: histo.over_cutoff, cutoff: histo.cutoff_len }) }));
}

async function setPurpose(d, purpose, note) {
  try { await api(`/api/datasets/${d.id}`, { method: "PATCH", json: { purpose } }); await list(); }
  catch (e) { message(note, errorText(e), "error"); }
}
