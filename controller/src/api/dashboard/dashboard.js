// policy-canary dashboard: refreshes the page's <main> every 2 s with the token
// (a `read` token shows everything; the buttons' actions need `operate`). The token
// is kept in this tab's sessionStorage; a `#token=...` fragment in the URL fills it
// in and is then removed. Without a token the server sends the page's frame only.
"use strict";
(function () {
  const KEY = "policy-canary-token";
  const tokenInput = document.getElementById("token");
  const reasonInput = document.getElementById("reason");
  const message = document.getElementById("message");
  function tokenFromFragment() {
    if (!location.hash.startsWith("#token=")) return false;
    sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(7)));
    history.replaceState(null, "", location.pathname + location.search);
    tokenInput.value = sessionStorage.getItem(KEY) || "";
    return true;
  }
  tokenFromFragment();
  tokenInput.value = sessionStorage.getItem(KEY) || "";
  tokenInput.addEventListener("input", () => sessionStorage.setItem(KEY, tokenInput.value.trim()));
  document.getElementById("auth").addEventListener("submit", (e) => e.preventDefault());

  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error" : "ok";
  }

  let refreshing = false;
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const params = new URLSearchParams(location.search);
      params.set("part", "main");
      const token = tokenInput.value.trim();
      const headers = token ? { "Authorization": "Bearer " + token } : {};
      const response = await fetch("/?" + params.toString(), { cache: "no-store", headers: headers });
      if (response.status === 401 || response.status === 403) {
        const body = await response.json().catch(() => ({}));
        say("the token cannot read this dashboard (" + response.status + "): " + (body.error || ""), true);
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const main = document.getElementById("main");
      const next = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("main");
      if (main && next) main.replaceWith(document.adoptNode(next));
      document.body.dataset.refreshed = String(Date.now());
      if (message.dataset.stale === "1") { say("", false); message.dataset.stale = "0"; }
    } catch (e) {
      say("cannot reach the controller (" + e.message + "); showing the last page", true);
      message.dataset.stale = "1";
    } finally {
      refreshing = false;
    }
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const action = button.dataset.action;
    const id = button.dataset.rollout;
    const token = tokenInput.value.trim();
    if (!token) {
      say("enter the API token first (the `token` file in the controller's state directory)", true);
      tokenInput.focus();
      return;
    }
    const reason = reasonInput.value.trim() || "manual " + action + " from the dashboard";
    // Applied only to the stage on screen (409 if the rollout moved meanwhile), and
    // once however often the request is retried.
    const expectedStage = Number(button.dataset.stage);
    const key = "dashboard-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
    button.disabled = true;
    try {
      const response = await fetch("/v1/rollouts/" + encodeURIComponent(id) + "/" + action, {
        method: "POST",
        headers: {
          "Authorization": "Bearer " + token,
          "Content-Type": "application/json",
          "Idempotency-Key": key,
        },
        body: JSON.stringify({ actor: "dashboard", reason: reason, expected_stage: expectedStage }),
      });
      const body = await response.json().catch(() => ({}));
      if (response.ok) {
        say(action + ": rollout #" + id + " is now " + body.phase, false);
      } else {
        say(action + " refused (" + response.status + "): " + (body.error || "no explanation"), true);
      }
    } catch (e) {
      say(action + " failed: " + e.message, true);
    }
    await refresh();
  });

  tokenInput.addEventListener("change", refresh);
  // A new `#token=` on the open page (the same URL otherwise) does not reload it.
  window.addEventListener("hashchange", () => { if (tokenFromFragment()) refresh(); });
  if (tokenInput.value && document.getElementById("main")?.dataset.locked === "1") refresh();
  setInterval(refresh, 2000);
})();
