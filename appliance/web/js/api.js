// Calls to the control plane. The session is an HttpOnly cookie the page never sees; every write
// carries the console's header, which the server requires of cookie-authenticated writes (CSRF).
import { readChatStream } from "../kiosk/sse.js";
const CSRF = { "X-Appliance-Console": "1" };

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status; this.body = body || {};
  }
}

let onUnauthorized = () => {};
export function whenSignedOut(fn) { onUnauthorized = fn; }

export async function api(path, { method = "GET", json, headers = {} } = {}) {
  const init = { method, headers: { ...CSRF, ...headers }, credentials: "same-origin" };
  if (json !== undefined) { init.body = JSON.stringify(json); init.headers["Content-Type"] = "application/json"; }
  const res = await fetch(path, init);
  const type = res.headers.get("content-type") || "";
  const body = res.status === 204 ? null : type.includes("json") ? await res.json() : await res.text();
  if (res.status === 401 && !path.startsWith("/console/session")) onUnauthorized();
  if (!res.ok) throw new ApiError(res.status, typeof body === "object" ? body : { detail: body });
  return body;
}

// XMLHttpRequest rather than fetch: it reports upload progress.
// A multipart upload with progress; resolves with the body and `existed` (200: the content was stored
// already). While it runs, leaving or reloading the page asks first (the upload would be lost).
export function upload(path, form, onProgress) {
  const guard = (e) => { e.preventDefault(); e.returnValue = ""; };
  window.addEventListener("beforeunload", guard);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("X-Appliance-Console", "1");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText || "{}"); } catch { body = { detail: xhr.responseText }; }
      xhr.status < 300 ? resolve({ body, existed: xhr.status === 200 }) : reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, { detail: "network error" }));
    xhr.send(form);
  }).finally(() => window.removeEventListener("beforeunload", guard));
}

// OpenAI-style streamed chat: calls onDelta with each piece of text; resolves with the whole answer.
export async function streamChat(path, body, onDelta, headers = {}) {
  const res = await fetch(path, { method: "POST", credentials: "same-origin",
    headers: { ...CSRF, "Content-Type": "application/json", ...headers }, body: JSON.stringify(body) });
  if (!res.ok) {
    const text = await res.text();
    let detail = text;
    try { const j = JSON.parse(text); detail = j.detail || (j.error && j.error.message) || text; } catch { /* text */ }
    throw new ApiError(res.status, { detail });
  }
  return readChatStream(res, onDelta);
}
