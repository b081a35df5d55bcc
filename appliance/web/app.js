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

let chartRun = null;

async function loadRuns() {
  const tbody = $("runs"); tbody.replaceChildren();
  const runs = await api("/api/runs");
  for (const r of runs) {
    const tr = document.createElement("tr");
    cell(tr, r.id); cell(tr, r.status);
    const bar = document.createElement("progress"); bar.max = r.max_steps || 1; bar.value = r.step;
    const prog = cell(tr, ""); prog.append(bar, ` ${r.step}/${r.max_steps ?? "?"}`);
    cell(tr, r.loss != null ? r.loss.toFixed(4) : "");
    const e = r.estimate;
    const est = cell(tr, e ? `${(e.peak_memory_mb / 1024).toFixed(1)} GiB, ~${Math.round(e.seconds / 60)} min on ${e.device}` : "");
    if (e && e.note) est.title = e.note;
    cell(tr, r.paused_for_serving_s ? `${r.paused_for_serving_s.toFixed(1)} s` : "0 s");
    // Rows cut or left out at cutoff_len, named (the full list is in the run's data_report and train.log).
    const d = r.data_report, rows = (ns) => ns.slice(0, 10).map((n) => n.row).join(", ");
    const cut = d && (d.truncated_count || d.dropped_count)
      ? `${d.truncated_count} row(s) truncated${d.truncated_count ? ` (${rows(d.truncated)})` : ""}, ` +
        `${d.dropped_count} dropped${d.dropped_count ? ` (${rows(d.dropped)})` : ""} at cutoff_len ${d.cutoff_len}` : "";
    const note = cell(tr, [r.error, cut].filter(Boolean).join(" | "));
    if (cut) note.title = [...d.truncated, ...d.dropped].map((n) => `row ${n.row}: ${n.detail}`).join("\n");
    const actions = cell(tr, "");
    const chart = document.createElement("button"); chart.textContent = "Loss";
    chart.onclick = () => { chartRun = r.id; drawChart(); };
    actions.append(chart);
    if (r.status === "queued" || r.status === "running") {
      const cancel = document.createElement("button"); cancel.textContent = "Cancel";
      cancel.onclick = async () => { await api(`/api/runs/${r.id}/cancel`, { method: "POST" }); await loadRuns(); };
      actions.append(" ", cancel);
    }
    tbody.appendChild(tr);
  }
  if (chartRun) await drawChart();
  return runs;
}

async function drawChart() {
  const points = (await api(`/api/runs/${chartRun}/metrics`)).filter((m) => m.kind === "train");
  const svg = $("chart"); svg.replaceChildren(); $("chart-box").hidden = false;
  $("chart-title").textContent = `${chartRun}: training loss by step`;
  await drawSamples();
  if (points.length < 2) return;
  const maxStep = points[points.length - 1].step, maxLoss = Math.max(...points.map((p) => p.loss));
  const xy = points.map((p) => `${(p.step / maxStep) * 590 + 5},${155 - (p.loss / maxLoss) * 145}`).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", xy); line.setAttribute("fill", "none"); line.setAttribute("stroke", "#2d6cdf");
  line.setAttribute("stroke-width", "2"); svg.appendChild(line);
}

// Answers to a few held-out questions at each eval step (runs with val_size), newest step first.
async function drawSamples() {
  const samples = (await api(`/api/runs/${chartRun}/samples`)).sort((a, b) => b.step - a.step || a.row - b.row).slice(0, 30);
  const tbody = $("samples"); tbody.replaceChildren(); $("samples-box").hidden = samples.length === 0;
  for (const s of samples) {
    const tr = document.createElement("tr");
    cell(tr, s.step); cell(tr, s.question); cell(tr, s.answer); cell(tr, s.reference);
    tbody.appendChild(tr);
  }
}

async function loadRunForm(datasets) {
  $("run-dataset").replaceChildren(...datasets.map((d) => new Option(`${d.name} (${d.rows} rows)`, d.id)));
  const presets = await api("/api/presets");
  $("run-preset").replaceChildren(...Object.keys(presets).map((p) => new Option(`preset: ${p}`, p)));
}

$("run-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const config = {};
  if ($("run-steps").value) config.max_steps = parseInt($("run-steps").value, 10);
  const out = $("run-result");
  try {
    const r = await api("/api/runs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ dataset_id: $("run-dataset").value, preset: $("run-preset").value, config }) });
    out.className = "ok"; out.textContent = `Queued ${r.id}: ${r.max_steps} steps.`;
    chartRun = r.id; await loadRuns();
  } catch (e) { out.className = "error"; out.textContent = e.message; }
};

async function loadDatasets() {
  const tbody = $("datasets"); tbody.replaceChildren();
  const datasets = await api("/api/datasets");
  await loadRunForm(datasets);
  for (const d of datasets) {
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

function size(bytes) { return bytes == null ? "" : `${(bytes / 1e6).toFixed(1)} MB`; }

async function loadArtifacts() {
  const tbody = $("artifacts"); tbody.replaceChildren();
  const arts = await api("/api/artifacts");
  for (const a of arts) {
    const tr = document.createElement("tr");
    [a.id, a.kind, a.type || "", a.status].forEach((v) => cell(tr, v));
    const bar = document.createElement("progress"); bar.max = 1; bar.value = a.progress ?? (a.status === "ready" ? 1 : 0);
    const prog = cell(tr, ""); prog.append(bar, ` ${a.stage || ""}`);
    cell(tr, size(a.size));
    const v = a.verification;
    cell(tr, v ? `top-1 ${(100 * v.top1_agreement).toFixed(1)}%, KL ${v.mean_kl.toExponential(1)}` : (a.error || ""));
    cell(tr, a.run_id || a.base_model_id || "");
    const actions = cell(tr, "");
    if (a.status === "ready" && a.kind !== "merged") {
      const link = document.createElement("button"); link.textContent = "Download";
      link.onclick = () => download(a);
      actions.append(link);
    }
    if (a.status === "ready" && a.kind === "gguf") {
      const deploy = document.createElement("button"); deploy.textContent = "Deploy";
      deploy.onclick = async () => {
        try {
          const d = await api("/api/deployments", { method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ artifact_id: a.id }) });
          $("deploy-result").textContent = `deployment ${d.id} queued`;
        } catch (e) { $("deploy-result").textContent = e.message; }
        await loadDeployments();
      };
      actions.append(" ", deploy);
    }
    tbody.appendChild(tr);
  }
  return arts;
}

async function download(a) {
  // The token goes in a header, so the file is fetched and handed to the browser as a blob.
  const res = await fetch(`/api/artifacts/${a.id}/download`, { headers: { Authorization: `Bearer ${token()}` } });
  const url = URL.createObjectURL(await res.blob());
  const link = document.createElement("a"); link.href = url; link.download = a.file || a.id; link.click();
  URL.revokeObjectURL(url);
}

async function loadExportSources(runs, models) {
  const select = $("export-source"); select.replaceChildren();
  for (const r of runs.filter((r) => r.status === "succeeded")) select.add(new Option(`run ${r.name || r.id}`, `run:${r.id}`));
  for (const m of models) select.add(new Option(`base model ${m.id}`, `model:${m.id}`));
}

$("export-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const [what, id] = $("export-source").value.split(/:(.*)/s);
  const type = $("export-type").value;
  const body = what === "run" ? { run_id: id } : { base_model_id: id };
  if (type === "adapter") body.kind = "gguf-adapter"; else body.type = type;
  try {
    const a = await api("/api/artifacts/export", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    $("export-result").textContent = `export ${a.id}: ${a.status}`;
  } catch (e) {
    const errs = (e.body && e.body.errors) || [];
    $("export-result").textContent = [e.message].concat(errs.map((x) => `${x.field}: ${x.message}`)).join(" · ");
  }
  await loadArtifacts();
};

async function loadDeployments() {
  const tbody = $("deployments"); tbody.replaceChildren();
  const deps = await api("/api/deployments");
  for (const d of deps) {
    const tr = document.createElement("tr");
    [d.id, d.status, d.model || "", d.strategy || "", d.gap_ms != null ? `${Math.round(d.gap_ms)} ms` : "",
     d.activated_at ? `${d.activated_at.slice(0, 19).replace("T", " ")} UTC` : "", d.error || ""].forEach((v) => cell(tr, v));
    tbody.appendChild(tr);
  }
  return deps;
}

$("rollback-btn").onclick = async () => {
  try {
    const d = await api("/api/deployments/rollback", { method: "POST" });
    $("deploy-result").textContent = `rolling back: deployment ${d.id} queued`;
  } catch (e) { $("deploy-result").textContent = e.message; }
  await loadDeployments();
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
    const [models, , runs] = await Promise.all([api("/api/models"), loadDatasets(), loadRuns(), loadModels(),
      loadArtifacts(), loadDeployments()]);
    await loadExportSources(runs, models);
    $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false;
    // Live progress: refresh a table every 2 s while something in it is still moving.
    const busy = (id, column, states) => Array.from($(id).rows).some((tr) => states.includes(tr.cells[column].textContent));
    setInterval(async () => {
      if (!token() || $("app").hidden) return;
      if (busy("runs", 1, ["queued", "running"])) await loadExportSources(await loadRuns(), models);
      if (busy("artifacts", 3, ["pending", "running"])) await loadArtifacts();
      if (busy("deployments", 1, ["pending"])) { await loadDeployments(); }
    }, 2000);
  } catch (e) { if (e.message !== "unauthorized") showLogin(e.message); }
}
start();
