"use strict";
// Shared by the pages: JSON API calls with the CSRF header (double submit of the deid_csrf cookie).
function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)deid_csrf=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function api(method, path, body) {
  const options = { method, headers: { "X-CSRF-Token": csrfToken() }, credentials: "same-origin" };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, options);
  if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
  const data = response.headers.get("Content-Type")?.includes("json") ? await response.json() : {};
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function setupHeader() {
  const session = await api("GET", "/api/session");
  const who = document.getElementById("who");
  if (who) who.textContent = session.auth_enabled ? `signed in as ${session.user}` : "auth off (localhost)";
  document.getElementById("logout")?.addEventListener("click", async () => {
    await api("POST", "/logout"); location.href = "/login";
  });
  return session;
}
