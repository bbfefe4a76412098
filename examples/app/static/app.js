// Small progressive enhancements: live polling of a request and of the scheduler queue, copy buttons.
// Every page works without JavaScript; this only keeps the numbers fresh.
(function () {
  "use strict";

  function text(el, value) { if (el) el.textContent = value; }

  function fmtUsd(pico) {
    if (pico === null || pico === undefined) return "—";
    var v = pico / 1e12;
    if (v === 0) return "$0";
    if (Math.abs(v) >= 1) return "$" + v.toFixed(2);
    return "$" + v.toFixed(6).replace(/0+$/, "").replace(/\.$/, "");
  }
  function fmtNum(n) { return (n === null || n === undefined) ? "—" : Number(n).toLocaleString("en-US"); }
  function fmtMs(ms) { if (ms === null || ms === undefined) return "—"; return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(1) + " s"; }

  // -- a request's page: poll /api/requests/{id} until it is finished ----------------------------------
  var job = document.querySelector("[data-poll-job]");
  if (job) {
    var url = job.getAttribute("data-poll-job");
    var tick = function () {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (!d) return;
          document.querySelectorAll("[data-field]").forEach(function (el) {
            var k = el.getAttribute("data-field"), kind = el.getAttribute("data-kind"), v = d[k];
            text(el, kind === "usd" ? fmtUsd(v) : kind === "ms" ? fmtMs(v) : kind === "num" ? fmtNum(v) : (v === null || v === undefined ? "—" : String(v)));
          });
          // while the answer streams in, poll faster so it reads as it is written
          if (d.done) { window.location.reload(); } else { setTimeout(tick, d.response ? 300 : 1000); }
        })
        .catch(function () { setTimeout(tick, 3000); });
    };
    setTimeout(tick, 800);
  }

  // -- request tables: rows still waiting or running refresh their status, tokens and cost -----------
  var CLASSES = { succeeded: "ok", running: "info", queued: "warn", deferred: "warn", failed: "bad", rejected: "bad", cancelled: "muted" };
  var liveRows = Array.prototype.slice.call(document.querySelectorAll("tr[data-live-id]"), 0, 20);
  var refreshRows = function () {
    liveRows = liveRows.filter(function (tr) { return tr.hasAttribute("data-live-id"); });
    if (!liveRows.length) return;
    Promise.all(liveRows.map(function (tr) {
      return fetch("/api/requests/" + encodeURIComponent(tr.getAttribute("data-live-id")), { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (!d) return;
          var badge = tr.querySelector('[data-live="status"] .badge');
          if (badge) { badge.textContent = d.status; badge.className = "badge " + (CLASSES[d.status] || "muted"); }
          text(tr.querySelector('[data-live="tokens"]'), fmtNum(d.input_tokens !== null ? d.input_tokens : d.est_input_tokens) + " / " + fmtNum(d.output_tokens));
          text(tr.querySelector('[data-live="cost"]'), fmtUsd(d.cost_pico_usd));
          if (d.done) tr.removeAttribute("data-live-id");
        })
        .catch(function () {});
    })).then(function () { setTimeout(refreshRows, 2000); });
  };
  if (liveRows.length) setTimeout(refreshRows, 1500);

  // -- the admin scheduler: redraw the queue every 2 s ------------------------------------------------
  var sched = document.querySelector("[data-poll-scheduler]");
  if (sched) {
    var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
    var esc = function (s) { return String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); };
    var actions = function (id) {
      return '<div class="inline">' +
        '<form method="post" action="/admin/scheduler/process"><input type="hidden" name="csrf_token" value="' + esc(csrf) + '"><input type="hidden" name="how" value="ids"><input type="hidden" name="id" value="' + esc(id) + '"><button class="small">Run</button></form>' +
        '<form method="post" action="/admin/scheduler/reject"><input type="hidden" name="csrf_token" value="' + esc(csrf) + '"><input type="hidden" name="id" value="' + esc(id) + '"><button class="small danger">Reject</button></form></div>';
    };
    var row = function (r, i, withActions) {
      return "<tr>" +
        '<td data-label="#">' + (i + 1) + "</td>" +
        '<td data-label="Request"><a href="/requests/' + encodeURIComponent(r.id) + '" class="mono">' + esc(r.id) + "</a></td>" +
        '<td data-label="User">' + esc(r.tenant) + "</td>" +
        '<td data-label="Priority"><span class="badge brand">' + esc(r.priority) + "</span></td>" +
        '<td data-label="Cost" class="num">' + fmtUsd(r.cost_p90) + "</td>" +
        '<td data-label="Deadline" class="num">' + (r.deadline_s ? esc(new Date(r.deadline_s * 1000).toISOString().slice(11, 19)) + " UTC" : "—") + "</td>" +
        '<td data-label="Wait" class="num">' + (r.wait_s === undefined || r.wait_s === null ? "—" : Number(r.wait_s).toFixed(1) + " s") + "</td>" +
        (withActions ? '<td data-label="">' + actions(r.id) + "</td>" : "") + "</tr>";
    };
    var fill = function (name, rows, withActions, cols) {
      var body = document.querySelector('[data-rows="' + name + '"]');
      if (!body) return;
      body.innerHTML = rows.length ? rows.map(function (r, i) { return row(r, i, withActions); }).join("") :
        '<tr class="empty-row"><td colspan="' + cols + '">Nothing here.</td></tr>';
      text(document.querySelector('[data-count="' + name + '"]'), rows.length);
    };
    var poll = function () {
      fetch("/admin/api/scheduler", { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (d) { fill("queue", d.queue, true, 8); fill("deferred", d.deferred, true, 8); fill("running", d.running, false, 7); }
          setTimeout(poll, 2000);
        })
        .catch(function () { setTimeout(poll, 4000); });
    };
    setTimeout(poll, 2000);
  }

  // -- confirmations (no inline handlers: the content security policy forbids them) ------------------
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
    });
  });

  // -- copy buttons -------------------------------------------------------------------------------------
  document.querySelectorAll("[data-copy]").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var target = document.getElementById(btn.getAttribute("data-copy"));
      if (!target || !navigator.clipboard) return;
      navigator.clipboard.writeText(target.textContent.trim()).then(function () { btn.textContent = "Copied"; });
    });
  });
})();
