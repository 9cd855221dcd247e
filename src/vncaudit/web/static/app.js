// vncaudit web: live progress while a scan runs, copy buttons for fix commands.
// Served from /static (CSP script-src 'self'); the pages work without it.
"use strict";

function startProgress(box) {
  const url = box.dataset.statusUrl;
  const bar = document.getElementById("progress-bar");
  const done = document.getElementById("progress-done");
  const total = document.getElementById("progress-total");
  const status = document.getElementById("progress-status");
  async function poll() {
    try {
      const response = await fetch(url, {headers: {"Accept": "application/json"}, cache: "no-store"});
      if (response.ok) {
        const s = await response.json();
        bar.max = Math.max(1, s.total);
        bar.value = s.done;
        done.textContent = String(s.done);
        total.textContent = String(s.total);
        const unit = document.getElementById("progress-unit");
        if (unit) unit.textContent = s.total === 1 ? "port" : "ports";
        status.textContent = s.phase === "discovering" ? "discovering subdomains" : s.status;
        box.dataset.done = String(s.done);
        showVerdict(s.verdict);
        if (s.status !== "queued" && s.status !== "running") {
          window.location.reload();
          return;
        }
      }
    } catch (e) {
      // the server may be restarting: keep polling
    }
    window.setTimeout(poll, 400);
  }
  window.setTimeout(poll, 200);
}

// While the scan runs, the banner already tells what has answered so far.
function showVerdict(v) {
  const banner = document.getElementById("verdict");
  if (!banner || !v) return;
  banner.className = "verdict " + v.css;
  banner.dataset.state = v.state;
  banner.dataset.severity = v.severity || "";
  banner.querySelector(".verdict-state").textContent = v.state.toUpperCase();
  banner.querySelector(".verdict-text").textContent = v.text;
}

function copyText(text, button) {
  const done = () => { button.textContent = "Copied"; window.setTimeout(() => { button.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  } else {
    fallbackCopy(text, done);
  }
}

function fallbackCopy(text, done) {
  const area = document.createElement("textarea");
  area.value = text;
  document.body.appendChild(area);
  area.select();
  try { document.execCommand("copy"); done(); } finally { area.remove(); }
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("progress");
  if (box) startProgress(box);
  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      if (source) copyText(source.textContent, button);
    });
  }
  const custom = document.getElementById("ports");
  if (custom) {
    custom.addEventListener("focus", () => {
      const radio = document.querySelector('input[name="preset"][value="custom"]');
      if (radio) radio.checked = true;
    });
  }
});
