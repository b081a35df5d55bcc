// The kiosk: a customer asks, the deployed model answers, streamed. It calls /v1/chat/completions
// only, with the kiosk key (typed once by staff, or from #key=... in the URL the QR code carries).
import { readChatStream } from "/kiosk/sse.js";
const $ = (id) => document.getElementById(id);
const KEY = "kioskKey";
let strings = {}, config = { title: "", welcome: "", idle_reset_s: 0 }, turns = [], idleTimer = null, busy = false;

const t = (k) => strings[k] || k;

async function load() {
  const lang = (navigator.languages || [navigator.language]).some((l) => /^zh/i.test(l)) ? "zh" : "en";
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  [strings, config] = await Promise.all([fetch(`/kiosk/${lang}.json`).then((r) => r.json()),
    fetch("/kiosk/config.json").then((r) => r.json())]);
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  $("title").textContent = config.title; $("doc-title").textContent = config.title;
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromUrl) {
    localStorage.setItem(KEY, fromUrl);
    history.replaceState(null, "", location.pathname);  // the key does not stay on screen or in the history
  }
  if (localStorage.getItem(KEY) && await keyWorks(localStorage.getItem(KEY))) startChat();
  else setup(localStorage.getItem(KEY) ? t("wrong_key") : "");
}

async function keyWorks(key) {
  const res = await fetch("/v1/models", { headers: { Authorization: `Bearer ${key}` } });
  return res.ok;
}

function setup(error) {
  $("chat").hidden = true; $("setup").hidden = false; $("new-chat").hidden = true;
  $("key-error").textContent = error || "";
  $("key").focus();
}

function startChat() {
  $("setup").hidden = true; $("chat").hidden = false; $("new-chat").hidden = false;
  reset();
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`; div.textContent = text;
  $("log").append(div); $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function reset() {
  turns = []; $("log").replaceChildren();
  if (config.welcome) bubble("assistant", config.welcome).classList.add("welcome");
  $("question").value = ""; $("question").focus();
}

function touched() {
  clearTimeout(idleTimer);
  if (config.idle_reset_s > 0) idleTimer = setTimeout(() => { if (!busy && turns.length) reset(); }, config.idle_reset_s * 1000);
}

async function ask(question) {
  busy = true; $("ask").disabled = true;
  turns.push({ role: "user", content: question });
  bubble("user", question);
  const answer = bubble("assistant", "");
  answer.dataset.streaming = "true";
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST",
      headers: { Authorization: `Bearer ${localStorage.getItem(KEY)}`, "Content-Type": "application/json" },
      body: JSON.stringify({ messages: turns, stream: true, max_tokens: 256 }) });
    if (res.status === 401) { turns.pop(); setup(t("wrong_key")); return; }
    if (!res.ok) {
      const code = res.status === 400 ? ((await res.json().catch(() => ({}))).error || {}).code : null;
      const tooLong = res.status === 413 || code === "context_length_exceeded";
      throw new Error(res.status === 503 ? t("busy") : tooLong ? t("too_long") : t("failed"));
    }
    const text = await readChatStream(res, (_piece, sofar) => {
      answer.textContent = sofar; $("log").scrollTop = $("log").scrollHeight;
    }).catch(() => { throw new Error(t("failed")); });  // broken mid-answer: not shown as a short answer
    turns.push({ role: "assistant", content: text });
  } catch (e) {
    turns.pop(); answer.classList.add("error"); answer.textContent = e.message || t("failed");
  } finally {
    answer.dataset.streaming = "false"; busy = false; $("ask").disabled = false; touched();
  }
}

$("key-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("key").value.trim();
  if (await keyWorks(key)) { localStorage.setItem(KEY, key); $("key").value = ""; startChat(); }
  else setup(t("wrong_key"));
});
$("ask-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("question").value.trim();
  if (q && !busy) { $("question").value = ""; ask(q); }
});
$("new-chat").addEventListener("click", reset);
for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, touched);
load();
