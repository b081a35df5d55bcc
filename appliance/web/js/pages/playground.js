// Playground: chat with the served models, two side by side on the same prompt, both answers streamed
// at once. The control plane relays to the inference server (/api/playground/chat), so the kiosk key
// stays on the server. A model not served now (the base model, an earlier artifact) is served for the
// comparison under the name "playground" (/api/playground/compare), past the gate, kiosks unaffected.
import { api, streamChat } from "../api.js";
import { t } from "../i18n.js";
import { button, card, errorText, field, h, heading, message, poller, select } from "../ui.js";

const panes = [{ model: "", history: [] }, { model: "", history: [] }];
let stop = () => {};

export function hide() { stop(); }

export async function show(section) {
  hide();
  const served = h("p", { id: "served", class: "muted" });
  const picks = panes.map((_p, i) => h("select", { id: `pane-${i}-model` }));
  const logs = panes.map((_p, i) => h("div", { id: `chat-log-${i}`, class: "chat", "aria-live": "polite" }));
  const input = h("textarea", { id: "prompt", rows: 3, cols: 60 });
  const send = h("button", { type: "submit", class: "primary", id: "send", text: t("play.send") });
  const clear = (i) => { panes[i].history = []; logs[i].replaceChildren(); };
  const f = h("form", { id: "chat-form", class: "row" }, field("play.prompt", input), send,
    button("play.clear", () => panes.forEach((_p, i) => clear(i))));
  const columns = panes.map((_p, i) => h("div", { class: "pane", "data-pane": String(i) },
    field(i ? "play.model_b" : "play.model_a", picks[i]), logs[i]));
  const status = h("p", { id: "compare-status", role: "status" });
  section.replaceChildren(card(heading("play.heading"), served, h("div", { class: "grid2 panes" }, columns), f),
    await compareCard(status, () => refresh()));
  panes.forEach((p, i) => { for (const m of p.history) logs[i].append(h("div", { class: `turn ${m.role}`, text: m.content })); });

  async function refresh() {
    let listed;
    try { listed = await api("/api/playground/models"); } catch { served.textContent = t("play.unreachable"); return null; }
    const ids = listed.models;
    served.textContent = ids.length ? t("play.serving", { model: ids.join(", ") }) : t("play.none");
    panes.forEach((p, i) => {
      if (!ids.includes(p.model)) p.model = i ? "" : ids[0] || "";
      const options = ids.map((id, k) => [id, k ? id : t("play.default_model", { model: id })]);
      picks[i].replaceWith(picks[i] = Object.assign(select(i ? [["", t("play.off")], ...options] : options, p.model),
        { id: `pane-${i}-model`, onchange: () => { p.model = picks[i].value; clear(i); } }));
    });
    const dep = listed.comparison;
    if (dep) message(status, t("play.compare_status", { model: dep.artifact_id || dep.base_model_id, status: t(`status.${dep.status}`) }),
      dep.status === "failed" ? "error" : "muted");
    status.dataset.status = dep ? dep.status : "";
    if (dep && dep.error) status.textContent += ` — ${dep.error}`;
  }
  await refresh();
  // While the comparison model loads, its status is refreshed until it is active (or failed).
  stop = poller(async () => { if (["gating", "pending"].includes(status.dataset.status)) await refresh(); }, 1500);

  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = ""; send.disabled = true;
    await Promise.all(panes.map((p, i) => (p.model ? ask(p, logs[i], text) : null)));
    send.disabled = false;
  });
}

// One pane's answer, streamed into its log; the panes' streams run at the same time.
async function ask(pane, log, text) {
  pane.history.push({ role: "user", content: text });
  log.append(h("div", { class: "turn user", text }));
  const answer = h("div", { class: "turn assistant", "data-streaming": "true", "data-model": pane.model });
  log.append(answer);
  try {
    const full = await streamChat("/api/playground/chat", { messages: pane.history, max_tokens: 128, model: pane.model },
      (_piece, sofar) => {
        answer.textContent = sofar;
        answer.dataset.chunks = String(Number(answer.dataset.chunks || 0) + 1);
        answer.dataset.firstAt ||= String(performance.now());
      });
    pane.history.push({ role: "assistant", content: full });
  } catch (e) {
    answer.className = "error"; answer.textContent = errorText(e); pane.history.pop();
  } finally { answer.dataset.doneAt = String(performance.now()); answer.dataset.streaming = "false"; }
}

// "Serve for comparison": a ready GGUF artifact or a base model, deployed as "playground".
async function compareCard(status, refresh) {
  const [arts, models] = await Promise.all([api("/api/artifacts?kind=gguf"), api("/api/models")]);
  const choices = [...models.filter((m) => m.has_gguf).map((m) => [`model:${m.id}`, m.id]),
    ...arts.filter((a) => a.status === "ready").map((a) => [`artifact:${a.id}`, `${a.name || a.id} (${a.type})`])];
  const model = select(choices);
  model.id = "compare-model";
  const go = h("button", { type: "submit", id: "compare-go", text: t("play.compare_go") });
  const f = h("form", { id: "compare-form", class: "row" }, field("play.compare_model", model), go);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [what, id] = model.value.split(/:(.*)/s);
    try {
      await api("/api/playground/compare", { method: "POST", json: { [what === "artifact" ? "artifact_id" : "base_model_id"]: id } });
      await refresh();
    } catch (e) { message(status, errorText(e), "error"); }
  });
  return card(heading("play.compare_heading"), h("p", { class: "muted", text: t("play.compare_hint") }),
    choices.length ? f : "", status);
}
