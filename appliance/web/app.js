// The appliance's page: plain JavaScript, no network beyond this appliance, no build step.
"use strict";
const $ = (id) => document.getElementById(id);
const token = () => localStorage.getItem("applianceToken");

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${token()}` }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) { showLogin("The token was refused."); throw new Error("unauthorized"); }
  const body = res.status === 204 ? null : await res.json();
  if (!res.ok) throw Object.assign(new Error(body.detail || res.statusText), { body });
  return body;
}

function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); return td; }

function showLogin(message) {
  $("app").hidden = true; $("login").hidden = false; $("logout").hidden = true;
  $("login-error").textContent = message || "";
}

async function loadModels() {
  const tbody = $("models"); tbody.replaceChildren();
  for (const m of await api("/api/models")) {
    const tr = document.createElement("tr");
    [m.id, m.architecture, m.parameters.toLocaleString(), m.context_length ?? "", m.chat_template ? "yes" : "no", m.source]
      .forEach((v) => cell(tr, v));
    tbody.appendChild(tr);
  }
}

async function loadDatasets() {
  const tbody = $("datasets"); tbody.replaceChildren();
  for (const d of await api("/api/datasets")) {
    const tr = document.createElement("tr");
    const s = d.token_stats[0];
    [d.id, d.name, d.format, d.rows, d.turns, s ? `${s.min_tokens} / ${s.median_tokens} / ${s.max_tokens}` : "",
     s ? `${s.over_cutoff} (> ${s.cutoff_len})` : ""].forEach((v) => cell(tr, v));
    const actions = cell(tr, "");
    const view = document.createElement("button"); view.textContent = "Preview";
    view.onclick = async () => {
      const p = await api(`/api/datasets/${d.id}/preview?n=3`);
      $("preview").hidden = false; $("preview").textContent = JSON.stringify(p.rows, null, 2);
    };
    const del = document.createElement("button"); del.textContent = "Delete";
    del.onclick = async () => {
      if (!confirm(`Delete dataset ${d.name}?`)) return;
      try { await api(`/api/datasets/${d.id}`, { method: "DELETE" }); await loadDatasets(); }
      catch (e) { $("upload-result").className = "error"; $("upload-result").textContent = e.message; }
    };
    actions.append(view, " ", del);
    tbody.appendChild(tr);
  }
}

function upload(form) {
  // XMLHttpRequest rather than fetch: it reports upload progress for large files.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/datasets");
    xhr.setRequestHeader("Authorization", `Bearer ${token()}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) $("upload-progress").value = (100 * e.loaded) / e.total; };
    xhr.onload = () => {
      const body = JSON.parse(xhr.responseText || "{}");
      xhr.status < 300 ? resolve(body) : reject(Object.assign(new Error(body.detail || xhr.statusText), { body }));
    };
    xhr.onerror = () => reject(new Error("network error"));
    xhr.send(form);
  });
}

$("upload-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const form = new FormData();
  form.append("file", $("file").files[0]);
  if ($("ds-name").value) form.append("name", $("ds-name").value);
  if ($("ds-format").value) form.append("format", $("ds-format").value);
  const out = $("upload-result");
  $("upload-progress").hidden = false; $("upload-btn").disabled = true;
  out.className = "muted"; out.textContent = "Uploading and checking every row…";
  try {
    const d = await upload(form);
    out.className = "ok"; out.textContent = `Stored ${d.name} as ${d.id}: ${d.rows} rows.`;
    await loadDatasets();
  } catch (e) {
    out.className = "error";
    const lines = (e.body && e.body.errors || []).map((p) => `  ${p.line != null ? "line " + p.line : p.row != null ? "row " + p.row : ""}${p.field ? " " + p.field : ""}: ${p.message}`);
    out.textContent = [e.message].concat(lines).join("\n");
  } finally {
    $("upload-progress").hidden = true; $("upload-btn").disabled = false;
  }
};

$("login-form").onsubmit = async (ev) => {
  ev.preventDefault();
  localStorage.setItem("applianceToken", $("token").value.trim());
  await start();
};
$("logout").onclick = () => { localStorage.removeItem("applianceToken"); showLogin(); };

async function start() {
  fetch("/healthz").then((r) => r.json()).then((h) => { $("health").textContent = `v${h.version} · ${h.status}`; });
  if (!token()) return showLogin();
  try {
    await Promise.all([loadModels(), loadDatasets()]);
    $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false;
  } catch (e) { if (e.message !== "unauthorized") showLogin(e.message); }
}
start();
