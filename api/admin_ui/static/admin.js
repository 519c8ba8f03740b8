// stylequeue admin: live progress for queued and running jobs, and confirmations.
// No framework: polls /admin/live every 2 s for the rows marked data-live.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var FINISHED = { succeeded: 1, failed: 1, canceled: 1 };

  function live() { return Array.prototype.slice.call(document.querySelectorAll("[data-live][data-job]")); }

  function setImage(el, src, alt) {
    if (!el) return;
    if (el.tagName !== "IMG") {
      var img = document.createElement("img");
      img.className = "thumb"; img.alt = alt; img.title = alt;
      img.setAttribute("data-role", el.getAttribute("data-role"));
      el.replaceWith(img); el = img;
    }
    // Keep the size this page asked for (96 px in the table, 320 px on a job's page).
    var size = (el.getAttribute("src") || "").match(/[?&]size=(\d+)/);
    if (size) src = src.replace(/([?&]size=)\d+/, "$1" + size[1]);
    if (el.getAttribute("src") !== src) el.setAttribute("src", src);
  }

  function update(el, job) {
    var chip = el.querySelector("[data-role=status]");
    if (chip) {
      chip.className = "chip " + job.status;
      chip.textContent = job.status + (job.cancel_requested && job.status === "running" ? " · canceling" : "");
    }
    var bar = el.querySelector("[data-role=bar]");
    if (bar) {
      bar.setAttribute("data-percent", job.percent.toFixed(1));
      bar.style.width = job.percent.toFixed(1) + "%";
      bar.className = "bar " + job.status;
    }
    var text = el.querySelector("[data-role=progress-text]");
    if (text) {
      text.textContent = Math.round(job.percent) + "% · " + job.iteration + "/" + job.iterations +
        (job.status === "running" && job.eta ? " · ETA " + job.eta : "");
    }
    var worker = el.querySelector("[data-role=worker]");
    if (worker && job.worker) worker.textContent = job.worker;
    var slot = el.querySelector("[data-role=preview], [data-role=result]");
    if (job.result) setImage(slot, job.result, "result");
    else if (job.preview) setImage(slot, job.preview, "live preview");
    el.setAttribute("data-status", job.status);
    if (FINISHED[job.status]) {
      el.removeAttribute("data-live");
      var cancel = el.querySelector("[data-role=cancel]");
      if (cancel) cancel.closest("form").remove();
      if (el.hasAttribute("data-reload-when-done")) window.location.reload();
    }
  }

  function poll() {
    var rows = live();
    if (!rows.length) return;
    var query = rows.map(function (r) { return "id=" + encodeURIComponent(r.getAttribute("data-job")); }).join("&");
    fetch("/admin/live?" + query, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { if (r.status === 401) { window.location.reload(); } return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) return;
        rows.forEach(function (el) {
          var job = body.jobs[el.getAttribute("data-job")];
          if (job) update(el, job);
        });
      })
      .catch(function () { /* the next poll tries again */ });
  }

  // The page has no inline script or style (its Content-Security-Policy allows neither):
  // the progress bars get their width, and the client filter its auto-submit, from here.
  function drawBars() {
    document.querySelectorAll("[data-role=bar][data-percent]").forEach(function (bar) {
      bar.style.width = bar.getAttribute("data-percent") + "%";
    });
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.hasAttribute && target.hasAttribute("data-autosubmit") && target.form) target.form.submit();
  });
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });
  document.addEventListener("DOMContentLoaded", function () {
    drawBars();
    if (live().length) setInterval(poll, POLL_MS);
  });
})();
