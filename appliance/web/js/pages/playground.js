// Playground: chat with the deployed model, the answer streamed as it is generated. The control
// plane relays to the inference server (/api/playground/chat), so the kiosk key stays on the server.
import { api, streamChat } from "../api.js";
import { t } from "../i18n.js";
import { button, card, errorText, field, h, heading } from "../ui.js";

let history = [];

export async function show(section) {
  const served = h("p", { id: "served", class: "muted" });
  const log = h("div", { id: "chat-log", class: "chat", "aria-live": "polite" });
  const input = h("textarea", { id: "prompt", rows: 3, cols: 60 });
  const send = h("button", { type: "submit", class: "primary", id: "send", text: t("play.send") });
  const f = h("form", { id: "chat-form", class: "row" }, field("play.prompt", input), send,
    button("play.clear", () => { history = []; log.replaceChildren(); }));
  section.replaceChildren(card(heading("play.heading"), served, log, f));
  for (const m of history) log.append(h("div", { class: `turn ${m.role}`, text: m.content }));
  api("/api/playground/model").then((m) => {
    const id = m.models[0];
    served.textContent = id ? t("play.serving", { model: id }) : t("play.none");
  }).catch(() => { served.textContent = t("play.unreachable"); });
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = ""; send.disabled = true;
    history.push({ role: "user", content: text });
    log.append(h("div", { class: "turn user", text }));
    const answer = h("div", { class: "turn assistant", "data-streaming": "true" });
    log.append(answer);
    try {
      const full = await streamChat("/api/playground/chat", { messages: history, max_tokens: 128 },
        (_piece, sofar) => { answer.textContent = sofar; answer.dataset.chunks = String(Number(answer.dataset.chunks || 0) + 1); });
      history.push({ role: "assistant", content: full });
    } catch (e) {
      answer.className = "error"; answer.textContent = errorText(e); history.pop();
    } finally { answer.dataset.streaming = "false"; send.disabled = false; }
  });
}
