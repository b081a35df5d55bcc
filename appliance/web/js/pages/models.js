// Models: base models and artifacts (type, size, verification), export with a choice of type and
// its progress, download.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { bytes, card, empty, errorText, field, h, heading, message, num, pct, poller, select, table } from "../ui.js";

const TYPES = ["q8_0", "q4_k_m", "q5_k_m", "q6_k", "q4_0", "f16", "bf16", "adapter"];
let stop = () => {};

export function hide() { stop(); }

export async function show(section) {
  hide();
  const [models, runs, arts] = await Promise.all([api("/api/models"), api("/api/runs"), api("/api/artifacts")]);
  const artBox = h("div", { id: "artifacts" });
  section.replaceChildren(baseModels(models), exportForm(runs, models, artBox), artBox);
  renderArtifacts(artBox, arts);
  stop = poller(async () => {
    if (artBox.querySelector("[data-status=pending],[data-status=running]")) renderArtifacts(artBox, await api("/api/artifacts"));
  }, 1500);
}

function baseModels(models) {
  if (!models.length) return card(heading("models.base"), empty("models.empty"));
  return card(heading("models.base"), table(["models.id", "models.arch", "models.params", "models.context", "models.source",
    "models.size"], models.map((m) => [m.id, m.architecture, `${(m.parameters / 1e6).toFixed(0)} M`,
    String(m.context_length ?? ""), m.source, bytes(m.gguf_size)])));
}

function exportForm(runs, models, artBox) {
  const done = runs.filter((r) => r.status === "succeeded");
  const source = select([...done.map((r) => [`run:${r.id}`, t("models.from_run", { name: r.name || r.id })]),
    ...models.map((m) => [`model:${m.id}`, t("models.from_model", { name: m.id })])]);
  const type = select(TYPES.map((x) => [x, t(`models.type_${x}`)]), "q8_0");
  source.id = "export-source"; type.id = "export-type";
  const out = h("p", { id: "export-result", role: "status" });
  const f = h("form", { id: "export-form", class: "row" }, field("models.source_pick", source), field("models.type", type),
    h("button", { type: "submit", class: "primary", text: t("models.export") }));
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [what, id] = source.value.split(/:(.*)/s);
    const body = what === "run" ? { run_id: id } : { base_model_id: id };
    if (type.value === "adapter") body.kind = "gguf-adapter"; else body.type = type.value;
    try {
      const a = await api("/api/artifacts/export", { method: "POST", json: body });
      message(out, t("models.export_queued", { id: a.id, status: t(`status.${a.status}`) }), "ok");
      renderArtifacts(artBox, await api("/api/artifacts"));
    } catch (e) { message(out, errorText(e), "error"); }
  });
  return card(heading("models.export_heading"), f, out);
}

function renderArtifacts(box, arts) {
  if (!arts.length) { box.replaceChildren(card(heading("models.artifacts"), empty("models.no_artifacts"))); return; }
  const rows = arts.map((a) => {
    const v = a.verification;
    const bar = h("progress", { max: 1, value: a.progress ?? (a.status === "ready" ? 1 : 0), "aria-label": t("models.progress") });
    // A folder (a LoRA adapter, a merged model) comes as one tar of its files, named by the server.
    const folder = a.kind === "adapter" || a.kind === "merged";
    const link = a.status === "ready"
      ? h("a", { href: `/api/artifacts/${a.id}/download`, download: folder ? "" : a.file || a.id, text: t("models.download") }) : "";
    return [a.name || a.id, a.kind, a.type || "", h("span", { class: "tag", text: t(`status.${a.status}`) }),
      h("span", {}, bar, a.stage || ""), bytes(a.size),
      v ? t("models.verification", { top1: pct(v.top1_agreement), kl: num(v.mean_kl, 4) }) : a.error || "",
      a.run_id || a.base_model_id || "", link];
  });
  box.replaceChildren(card(heading("models.artifacts"), table(["models.name", "models.kind", "models.type", "models.status",
    "models.progress", "models.size", "models.verify", "models.from", ""], rows,
  (i) => ({ "data-id": arts[i].id, "data-status": arts[i].status, "data-type": arts[i].type || "" }))));
}
