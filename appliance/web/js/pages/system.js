// System: CPU, memory, disk and GPU use (refreshed every 3 s while shown), versions, the data
// directory, and the kiosk address and key with a QR code that carries both (#key=... in the URL).
import { api } from "../api.js";
import { t } from "../i18n.js";
import { bytes, card, h, heading, poller, table } from "../ui.js";
import qrcode from "../../vendor/qrcode.js";

let stop = () => {};

export function hide() { stop(); }

export async function show(section) {
  hide();
  const usage = h("div", { id: "usage" }), kiosk = h("div", { id: "kiosk" }), about = h("div", { id: "about" });
  section.replaceChildren(card(heading("system.usage"), usage), card(heading("system.kiosk"), kiosk), card(heading("system.about"), about));
  const s = await api("/api/system");
  renderUsage(usage, s); renderKiosk(kiosk, s); renderAbout(about, s);
  stop = poller(async () => renderUsage(usage, await api("/api/system")), 3000);
}

function meter(labelKey, used, total, extra = "") {
  const share = total ? used / total : 0;
  return h("div", { class: "field" }, h("span", { text: `${t(labelKey)}: ${(100 * share).toFixed(0)}% ${extra}` }),
    h("progress", { max: 1, value: share, "aria-label": t(labelKey) }));
}

function renderUsage(box, s) {
  const parts = [meter("system.cpu", s.cpu_percent ?? 0, 100, t("system.cores", { n: s.cpu_count }))];
  if (s.memory) parts.push(meter("system.memory", s.memory.used_bytes, s.memory.total_bytes, `(${bytes(s.memory.used_bytes)} / ${bytes(s.memory.total_bytes)})`));
  parts.push(meter("system.disk", s.disk.used_bytes, s.disk.total_bytes, `(${bytes(s.disk.used_bytes)} / ${bytes(s.disk.total_bytes)})`));
  for (const g of s.gpus) parts.push(meter("system.gpu", g.used_bytes, g.total_bytes, `${g.name} (${bytes(g.used_bytes)} / ${bytes(g.total_bytes)})`));
  if (!s.gpus.length) parts.push(h("p", { class: "muted", text: t("system.no_gpu") }));
  box.replaceChildren(...parts);
}

function renderKiosk(box, s) {
  const full = `${s.kiosk_url}#key=${encodeURIComponent(s.kiosk_key)}`;
  const qr = qrcode(0, "M"); qr.addData(full); qr.make();
  const img = h("img", { id: "kiosk-qr", src: qr.createDataURL(5, 10), alt: t("system.qr_alt") });
  const key = h("input", { id: "kiosk-key", readOnly: true, value: s.kiosk_key, size: 40 });
  box.replaceChildren(h("div", { class: "grid2" },
    h("div", {}, h("p", { text: t("system.kiosk_hint") }),
      h("p", {}, h("a", { id: "kiosk-url", href: s.kiosk_url, target: "_blank", rel: "noopener", text: s.kiosk_url })),
      h("div", { class: "field" }, h("label", { for: "kiosk-key", text: t("system.kiosk_key") }), key),
      h("p", { class: "muted", text: t("system.kiosk_settings", { title: s.kiosk_title, idle: s.kiosk_idle_reset_s }) })),
    h("div", {}, img)));
}

function renderAbout(box, s) {
  box.replaceChildren(table(["system.component", "system.version"], Object.entries(s.versions)),
    h("p", {}, `${t("system.data_dir")}: `, h("code", { text: s.data_dir })));
}
