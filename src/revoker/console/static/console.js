// Live job progress: poll the console's JSON endpoint and update the page in place (no reload).
// Text is set with textContent only: nothing from the server is ever parsed as HTML.
"use strict";
(function () {
  const root = document.querySelector("[data-poll]");
  if (!root) { return; }
  const url = root.dataset.poll;
  const live = document.getElementById("live");
  const prefix = "/console";
  const symbols = { pending: "○", running: "◔", done: "✓", failed: "✗" };

  function when(ts) {
    return ts === null || ts === undefined ? "-" : new Date(ts * 1000).toISOString().replace("Z", "+00:00");
  }
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    (children || []).forEach((c) => node.append(c));
    return node;
  }
  function badge(status) {
    return el("span", { class: "status status-" + status, "data-field": "status" },
      [el("span", { "aria-hidden": "true" }, [symbols[status] || "?"]), " " + status]);
  }
  function progress(job) {
    return el("progress", { "aria-label": "chunks done", max: String(job.chunks_total || 1), value: String(job.chunks_done), "data-field": "progress" });
  }
  function what(job) {
    let text = job.kind + " " + (job.tenant_id || "");
    if (job.user_id) { text += " user " + job.user_id; }
    if (job.dry_run) { text += " (dry run)"; }
    return text;
  }
  function row(job) {
    return el("tr", { "data-job": job.id }, [
      el("td", {}, [el("a", { href: prefix + "/jobs/" + encodeURIComponent(job.id) }, [job.id])]),
      el("td", {}, [badge(job.status)]),
      el("td", {}, [what(job)]),
      el("td", {}, [job.actor || "-"]),
      el("td", {}, [progress(job), " " + job.chunks_done + "/" + job.chunks_total]),
      el("td", {}, [job.families_matched + " / " + job.families_revoked]),
      el("td", { class: "when" }, [when(job.created_at)]),
    ]);
  }
  function renderList(jobs) {
    const body = root.querySelector("tbody");
    const rows = jobs.map(row);
    if (!rows.length) { rows.push(el("tr", {}, [el("td", { colspan: "7" }, ["No jobs."])])); }
    body.replaceChildren(...rows);
  }
  function setField(name, value) {
    root.querySelectorAll('[data-field="' + name + '"]').forEach((node) => { node.textContent = value; });
  }
  function renderJob(job) {
    root.querySelector('[data-field="status"]').replaceWith(badge(job.status));
    const bar = root.querySelector('[data-field="progress"]');
    bar.max = job.chunks_total || 1;
    bar.value = job.chunks_done;
    setField("chunks", job.chunks_done + "/" + job.chunks_total);
    setField("families_matched", String(job.families_matched));
    setField("families_revoked", String(job.families_revoked));
    ["watermark_at", "created_at", "published_at", "started_at", "finished_at"].forEach((k) => setField(k, when(job[k])));
    setField("error", job.error || "none");
    setField("last_error", job.last_error || "none");
    setField("parked", job.parked.length ? job.parked.join(", ") : "none");
    const count = document.getElementById("dry-run-count");
    if (count && job.status === "done") {
      count.replaceChildren("The dry run matched ", el("strong", {}, [String(job.families_matched)]), " sessions.");
      document.getElementById("confirm-fields").disabled = false;
    }
    return job.status === "done" || job.status === "failed";
  }
  async function tick() {
    let finished = false;
    try {
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (answer.status === 401) {
        live.textContent = "Signed out: sign in again to see live progress.";
        return;
      }
      if (!answer.ok) { throw new Error("HTTP " + answer.status); }
      const data = await answer.json();
      if (data.jobs) { renderList(data.jobs); } else { finished = renderJob(data.job); }
      live.textContent = finished ? "Finished." : "Live: updated " + new Date().toISOString().slice(11, 19) + " UTC.";
    } catch (error) {
      live.textContent = "Update failed (" + error.message + "); retrying.";
    }
    if (!finished) { setTimeout(tick, 1000); }
  }
  if (root.dataset.finished !== "yes") { setTimeout(tick, 500); }
})();
