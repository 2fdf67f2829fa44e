// policy-canary dashboard: refreshes the page's <main> every 2 s with the token
// (a `read` token shows everything; the buttons' actions need `operate`). Sign in
// by pasting a token: it is kept in this tab's sessionStorage only. A token is
// never taken from the URL (it would stay in the browser's history): a `#token=`
// fragment is removed and refused with a message. Without a token the server
// sends the page's frame only.
"use strict";
(function () {
  const KEY = "policy-canary-token";
  const tokenInput = document.getElementById("token");
  const reasonInput = document.getElementById("reason");
  const message = document.getElementById("message");

  function storedToken() {
    try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; }
  }
  function storeToken(token) {
    try {
      if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
    } catch (e) { /* storage refused (private mode): the field still holds it */ }
  }

  // The page reads nothing from its fragment; one carrying a token is removed and
  // refused. Whatever the fragment holds (a malformed `%` too), the page goes on.
  function checkFragment() {
    const fragment = location.hash.slice(1);
    if (!fragment) return;
    let text = fragment;
    let malformed = false;
    try { text = decodeURIComponent(fragment); } catch (e) { malformed = true; }
    const hasToken = /(^|[&;?])\s*token=/i.test(text);
    if (hasToken) {
      try { history.replaceState(null, "", location.pathname + location.search); } catch (e) { /* keep going */ }
    }
    const problems = [];
    if (malformed) problems.push("ignored the URL's fragment: it is not valid percent-encoding");
    if (hasToken) problems.push("a token in the URL is not used: it stays in the browser's history. Paste it into the token field and sign in (and consider revoking it)");
    if (problems.length) say(problems.join("; "), true);
  }

  // The signed-in token: what requests carry (not whatever the field holds).
  let token = storedToken();
  tokenInput.value = token;
  document.getElementById("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    token = tokenInput.value.trim();
    storeToken(token);
    say(token ? "signed in for this tab" : "", false);
    refresh();
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    token = "";
    storeToken("");
    tokenInput.value = "";
    location.reload();
  });

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
    if (!token) {
      say("paste an API token and sign in first", true);
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

  window.addEventListener("hashchange", checkFragment);
  checkFragment();
  if (token && document.getElementById("main")?.dataset.locked === "1") refresh();
  setInterval(refresh, 2000);
})();
