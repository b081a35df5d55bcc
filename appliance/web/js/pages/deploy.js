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
  section.replaceChildren(form(arts, models, datasets, history), history);
  await render(history);
  stop = poller(async () => { if (history.querySelector("[data-status=gating],[data-status=pending]")) await render(history); }, 1500);
}

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
      out.replaceChildren(h("p", { class: "ok", text: t("deploy.queued", { id: d.id, status: t(`status.${d.status}`) }) }));
    } catch (e) {
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
  const rows = deps.map((d) => [d.model || d.artifact_id || d.base_model_id || "", h("span", { class: "tag", text: t(`status.${d.status}`) }),
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
