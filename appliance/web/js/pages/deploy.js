// Deploy: a model through the deployment gate (its verdict shown; a 409 refusal can be forced,
// which is recorded), under a name beside the site's default (kiosks send it as `model`; LoRA
// adapters share one loaded base), roll back, remove a name, and the history with why one failed.
import { api } from "../api.js";
import { t } from "../i18n.js";
import { button, card, empty, errorText, field, h, heading, message, poller, select, table, when } from "../ui.js";

let stop = () => {};

export function hide() { stop(); }

export async function show(section) {
  hide();
  const [ggufs, adapters, models, datasets] = await Promise.all([api("/api/artifacts?kind=gguf"),
    api("/api/artifacts?kind=gguf-adapter"), api("/api/models"), api("/api/datasets")]);
  const arts = [...ggufs, ...adapters];
  const history = h("div", { id: "deployments" });
  names = new Map(arts.map((a) => [a.id, a.name || a.id]));
  section.replaceChildren(form(arts, models, datasets, history), history);
  await render(history);
  stop = poller(async () => { if (history.querySelector("[data-status=gating],[data-status=pending]")) await render(history); }, 1500);
}

let names = new Map();  // artifact id -> its name, for the history's Model column

function form(arts, models, datasets, history) {
  const label = (a) => (a.kind === "gguf-adapter" ? t("deploy.adapter", { name: a.name || a.id }) : `${a.name || a.id} (${a.type})`);
  const choices = [...arts.filter((a) => a.status === "ready").map((a) => [`artifact:${a.id}`, label(a)]),
    ...models.filter((m) => m.has_gguf).map((m) => [`model:${m.id}`, m.id])];
  if (!choices.length) return card(heading("deploy.new"), empty("deploy.empty_models"));
  const model = select(choices);
  const sets = select([["", t("deploy.newest_set")], ...datasets.filter((d) => d.purpose === "eval").map((d) => [d.id, d.name])], "");
  const name = h("input", { id: "deploy-name", type: "text", placeholder: t("deploy.name_hint"), pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}" });  // browsers compile it with the v flag: - escaped
  model.id = "deploy-model"; sets.id = "deploy-set";
  const out = h("div", { id: "deploy-result", role: "status" });
  const send = async (force) => {
    const [what, id] = model.value.split(/:(.*)/s);
    const body = { [what === "artifact" ? "artifact_id" : "base_model_id"]: id, force };
    if (sets.value) body.eval_dataset_id = sets.value;
    if (name.value.trim()) body.name = name.value.trim();
    try {
      const d = await api("/api/deployments", { method: "POST", json: body });
      out.dataset.id = d.id;  // render() keeps this line's status current as the history changes
      out.replaceChildren(h("p", { class: "ok", text: t("deploy.queued", { id: d.id, status: t(`status.${d.status}`) }) }));
    } catch (e) {
      delete out.dataset.id;
      const p = h("p", { class: "error", text: errorText(e) });
      out.replaceChildren(p);
      if (e.status === 409) out.append(h("p", { class: "muted", text: t("deploy.refused_hint") }), button("deploy.force", () => send(true), "danger"));
    }
    await render(history);
  };
  const f = h("form", { id: "deploy-form", class: "row" }, field("deploy.model", model), field("deploy.name", name), field("deploy.set", sets),
    h("button", { type: "submit", class: "primary", text: t("deploy.go") }));
  f.addEventListener("submit", (ev) => { ev.preventDefault(); send(false); });
  const rollback = button("deploy.rollback", async () => {
    delete out.dataset.id;  // this line now tells of the rollback, not of the deployment before it
    try {
      const d = await api("/api/deployments/rollback", { method: "POST" });
      message(out, t("deploy.rolling_back", { id: d.id }), "ok");
    } catch (e) { message(out, errorText(e), "error"); }
    await render(history);
  });
  rollback.id = "rollback";
  return card(heading("deploy.new"), h("p", { class: "muted", text: t("deploy.hint") }), f, out, h("p", {}, rollback));
}

async function render(box) {
  const deps = await api("/api/deployments");
  if (!deps.length) { box.replaceChildren(card(heading("deploy.history"), empty("deploy.empty"))); return; }
  // The deployment just requested above the history: its line follows it (gating, pending, active or failed).
  const out = document.getElementById("deploy-result"), mine = out && deps.find((d) => d.id === out.dataset.id);
  if (mine) {
    out.replaceChildren(h("p", { class: mine.status === "failed" ? "error" : "ok",
      text: t("deploy.queued", { id: mine.id, status: t(`status.${mine.status}`) }) + (mine.error ? ` ${mine.error}` : "") }));
  }
  const served = (d) => names.get(d.artifact_id) || d.artifact_id || d.base_model_id || d.model || "";
  const rows = deps.map((d) => [d.name ? `${d.name}: ${served(d)}` : served(d), h("span", { class: "tag", text: t(`status.${d.status}`) }),
    d.gate ? h("span", {}, h("span", { class: `verdict-${d.gate.status}`, text: t(`gate.${d.gate.status}`) }), h("br"),
      h("span", { class: "muted", text: d.gate.reason })) : "",
    d.strategy || "", d.gap_ms != null ? `${Math.round(d.gap_ms)} ms` : "", when(d.activated_at), d.forced_by || "", d.error || "",
    d.name && d.status === "active" ? button("deploy.undeploy", async () => {
      try {
        await api(`/api/deployments/undeploy?name=${encodeURIComponent(d.name)}`, { method: "POST" });
      } catch (e) { box.prepend(h("p", { class: "error", text: errorText(e) })); return; }
      await render(box);
    }) : ""]);
  box.replaceChildren(card(heading("deploy.history"), table(["deploy.model", "deploy.status", "deploy.gate", "deploy.strategy",
    "deploy.gap", "deploy.activated", "deploy.forced", "deploy.error", "deploy.actions"], rows,
  (i) => ({ "data-id": deps[i].id, "data-status": deps[i].status }))));
}
