// One catalogue per language (../i18n/<lang>.json); markup names keys with data-i18n* attributes.
export const LANGS = ["en", "zh"];
let lang = "en", catalogue = {};
const listeners = [];

export function pickLanguage() {
  const saved = localStorage.getItem("lang");  // a display preference, not a secret
  if (LANGS.includes(saved)) return saved;
  return (navigator.languages || [navigator.language]).some((l) => /^zh/i.test(l)) ? "zh" : "en";
}

export async function setLanguage(next) {
  catalogue = await (await fetch(`/static/i18n/${next}.json`)).json();
  lang = next;
  document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
  localStorage.setItem("lang", next);
  apply(document);
  listeners.forEach((fn) => fn(next));
}

export function onLanguage(fn) { listeners.push(fn); }
export function language() { return lang; }

export function t(key, vars = {}) {
  const text = catalogue[key];
  if (text === undefined) { console.warn(`missing string ${key}`); return key; }
  return text.replace(/\{(\w+)\}/g, (_, name) => (vars[name] ?? `{${name}}`));
}

export function apply(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
}
