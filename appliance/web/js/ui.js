// Small DOM helpers shared by the pages: every visible string comes through t().
import { t } from "./i18n.js";

// h("button", { class: "primary", onclick: fn, text: t("x") }, child, ...)
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

export const card = (...children) => h("div", { class: "card" }, ...children);
export const heading = (key, level = "h2") => h(level, { text: t(key) });
export const empty = (key) => h("p", { class: "empty", text: t(key) });

// A table with translated column heads; rows are arrays of strings or nodes.
export function table(heads, rows, rowAttrs = () => ({})) {
  return h("table", {},
    h("thead", {}, h("tr", {}, heads.map((k) => h("th", { text: k ? t(k) : "" })))),
    h("tbody", {}, rows.map((r, i) => h("tr", rowAttrs(i), r.map((c) => h("td", {}, c ?? ""))))));
}

export function field(labelKey, control) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id, text: t(labelKey) }), control);
}

export function select(options, value) {
  const s = h("select", {});
  for (const [v, label] of options) s.add(new Option(label, v, false, v === value));
  return s;
}

export function button(key, onclick, cls) { return h("button", { type: "button", class: cls, onclick, text: t(key) }); }

export function message(el, text, kind = "muted") { el.className = kind; el.textContent = text; }

// An error as the API gives it: detail, then each problem with file, line and field.
export function errorText(e) {
  const problems = (e.body && e.body.errors) || [], file = e.body && e.body.file;
  const lines = problems.map((p) => {
    const where = [file, p.line != null ? t("err.line", { n: p.line }) : p.row != null ? t("err.row", { n: p.row }) : "",
      p.field].filter(Boolean).join(" · ");
    return `  ${where}: ${p.message}`;
  });
  // With its problems listed, the head is their count: the detail already names the first ones (said twice).
  const head = lines.length ? t("err.problems", { file: file || "", n: (e.body && e.body.error_count) || lines.length })
    : e.message;
  return [head].concat(lines).join("\n");
}

export function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0; while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// The API's times are UTC, without a zone when read back from SQLite, and with microseconds.
export function parseTime(iso) {
  const ms = iso.replace(/(\.\d{3})\d+/, "$1");
  return Date.parse(/([zZ]|[+-]\d\d:\d\d)$/.test(ms) ? ms : `${ms}Z`);
}
export function when(iso) { return iso ? new Date(parseTime(iso)).toLocaleString(document.documentElement.lang) : ""; }
export function pct(x) { return x == null ? "" : `${(100 * x).toFixed(1)}%`; }
export function num(x, digits = 3) { return x == null ? "" : Number(x).toFixed(digits); }

// Refresh while the page is shown; stops when the page is left (the router calls stop()).
export function poller(fn, ms) {
  let timer = setInterval(fn, ms);
  return () => { clearInterval(timer); timer = null; };
}
