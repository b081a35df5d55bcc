// The console: sign-in, navigation between the seven pages, language. Each page is a module in
// ./pages with show(section) (and optionally hide()); nothing here knows a page's content.
import { api, whenSignedOut } from "./api.js";
import { apply, onLanguage, pickLanguage, setLanguage, t } from "./i18n.js";
import * as datasets from "./pages/datasets.js";
import * as deploy from "./pages/deploy.js";
import * as evaluations from "./pages/evaluations.js";
import * as models from "./pages/models.js";
import * as playground from "./pages/playground.js";
import * as runs from "./pages/runs.js";
import * as system from "./pages/system.js";

const PAGES = { datasets, runs, models, evaluations, deploy, playground, system };
const $ = (id) => document.getElementById(id);
let current = null;

function signedOut(messageKey) {
  if (current && PAGES[current].hide) PAGES[current].hide();
  current = null;
  $("console").hidden = true; $("sign-out").hidden = true; $("sign-in-page").hidden = false;
  $("sign-in-error").textContent = messageKey ? t(messageKey) : "";
  $("token").focus();
}

async function route() {
  const name = (location.hash.slice(1).split("/")[0]) || "datasets";
  const page = PAGES[name] ? name : "datasets";
  if (current && PAGES[current].hide) PAGES[current].hide();
  current = page;
  for (const s of document.querySelectorAll("[data-page]")) s.hidden = s.dataset.page !== page;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const section = document.querySelector(`[data-page="${page}"]`);
  try { await PAGES[page].show(section, location.hash.slice(1).split("/").slice(1)); }
  catch (e) { if (e.status !== 401) { section.replaceChildren(); section.append(Object.assign(document.createElement("p"), { className: "error", textContent: e.message })); } }
}

async function signedIn() {
  $("sign-in-page").hidden = true; $("console").hidden = false; $("sign-out").hidden = false;
  await route();
}

$("sign-in-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("/console/session", { method: "POST", json: { token: $("token").value } });
    $("token").value = "";
    await signedIn();
  } catch (e) {
    $("sign-in-error").textContent = e.status === 401 ? t("signin.refused") : e.message;
  }
});

$("sign-out").addEventListener("click", async () => {
  await api("/console/session", { method: "DELETE" });
  signedOut();
});

$("lang").addEventListener("change", () => setLanguage($("lang").value));
onLanguage((lang) => { $("lang").value = lang; if (current) route(); });
window.addEventListener("hashchange", () => { if (!$("console").hidden) route(); });
whenSignedOut(() => signedOut("signin.expired"));

async function start() {
  await setLanguage(pickLanguage());
  apply(document);
  try { await api("/console/session"); await signedIn(); } catch { signedOut(); }
}
start();
