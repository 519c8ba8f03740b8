// stylequeue admin: live updates and confirmations. No framework, no inline script.
// - Rows and pages marked data-live (queued and running jobs) are polled every 2 s at
//   /admin/live: status, progress, times, lease, worker, images, loss curve.
// - The job table (data-live-new, first page) also gets the jobs submitted since it was
//   drawn, as rows rendered by the server, and the status counts.
// - An element with data-refresh="URL" data-every="ms" has its content replaced by that
//   URL's (a page's own body, ?fragment=1) every so often: statistics and workers.
// - [data-beat-at] cells count the seconds since a worker's last heartbeat.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var FINISHED = { succeeded: 1, failed: 1, canceled: 1 };
  var clockOffset = 0; // the server's clock minus this browser's

  function all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }
  function live() { return all("[data-live][data-job]"); }
  function table() { return document.querySelector("table[data-live-new]"); }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return Math.round(value * 1000) + " ms";
    if (value < 60) return value.toFixed(1) + " s";
    var whole = Math.round(value);
    if (whole < 3600) return Math.floor(whole / 60) + " min " + ("0" + (whole % 60)).slice(-2) + " s";
    return Math.floor(whole / 3600) + " h " + ("0" + Math.floor((whole % 3600) / 60)).slice(-2) + " min";
  }

  function setImage(el, src, alt) {
    if (!el) return;
    if (el.tagName !== "IMG") {
      var img = document.createElement("img");
      img.className = "thumb"; img.alt = alt; img.title = alt;
      img.setAttribute("data-role", el.getAttribute("data-role") || "preview");
      el.replaceWith(img); el = img;
    }
    // Keep the size this page asked for (96 px in the table, 320 px on a job's page).
    var size = (el.getAttribute("src") || "").match(/[?&]size=(\d+)/);
    if (size) src = src.replace(/([?&]size=)\d+/, "$1" + size[1]);
    else if (el.closest("[data-size]")) src = src.replace(/([?&]size=)\d+/, "$1" + el.closest("[data-size]").getAttribute("data-size"));
    if (el.getAttribute("src") !== src) el.setAttribute("src", src);
    el.alt = alt; el.title = alt;
  }

  function text(el, role, value) {
    var found = el.querySelector("[data-role=" + role + "]");
    if (found && value !== undefined && value !== null && found.textContent !== String(value)) found.textContent = value;
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
      if (bar.parentNode) bar.parentNode.title = job.iteration + " / " + job.iterations + " iterations";
    }
    text(el, "progress-text", Math.round(job.percent) + "% · " + job.iteration + "/" + job.iterations +
      (job.status === "running" && job.eta ? " · ETA " + job.eta : ""));
    if (job.worker) text(el, "worker", job.worker);
    text(el, "wait", job.wait);
    text(el, "run", job.run);
    text(el, "attempts", job.attempts);
    text(el, "lease", job.lease || "–");
    var error = el.querySelector("[data-role=error]");
    if (error && job.error_code && !error.textContent) {
      var code = document.createElement("div"); code.className = "small error-text mono"; code.textContent = job.error_code;
      var message = document.createElement("div"); message.className = "small error-message";
      message.textContent = job.error_message || ""; message.title = job.error_message || "";
      error.appendChild(code); error.appendChild(message);
    }
    var slot = el.querySelector("[data-role=preview], [data-role=result]");
    if (job.result) setImage(slot, job.result, "result");
    else if (job.preview) setImage(slot, job.preview, FINISHED[job.status] ? "last preview (" + job.iteration + "/" + job.iterations + ")" : "live preview");
    var caption = el.querySelector("[data-role=last-caption]");
    if (caption && (job.result || job.preview)) caption.textContent = job.result ? "result" : (FINISHED[job.status] ? "last preview" : "live preview");
    var losses = el.querySelector("img[data-role=losses]");
    if (losses && job.losses && losses.getAttribute("src") !== job.losses) losses.setAttribute("src", job.losses);
    el.setAttribute("data-status", job.status);
    if (FINISHED[job.status]) {
      el.removeAttribute("data-live");
      var cancel = el.querySelector("[data-role=cancel]");
      if (cancel) cancel.closest("form").remove();
      if (el.hasAttribute("data-reload-when-done")) window.location.reload();
    }
  }

  function addRows(tbl, body) {
    if (body.rows && body.rows.trim()) {
      var tbody = tbl.querySelector("tbody");
      all("tr.no-rows", tbody).forEach(function (r) { r.remove(); });
      var known = {};
      all("tr[data-job]", tbody).forEach(function (r) { known[r.getAttribute("data-job")] = 1; });
      var holder = document.createElement("tbody");
      holder.innerHTML = body.rows; // rendered by the server, as the page's own rows
      all("tr[data-job]", holder).reverse().forEach(function (row) {
        if (known[row.getAttribute("data-job")]) return;
        row.classList.add("new");
        tbody.insertBefore(row, tbody.firstChild);
      });
      drawBars();
    }
    if (body.newest !== undefined) tbl.setAttribute("data-newest", body.newest);
    var more = document.getElementById("new-jobs");
    if (more && body.more) more.hidden = false;
    if (body.counts) {
      Object.keys(body.counts).forEach(function (status) {
        all("[data-count=" + status + "]").forEach(function (c) { c.textContent = body.counts[status]; });
      });
      all("[data-count=total]").forEach(function (c) { c.textContent = body.total; });
    }
  }

  function poll() {
    var rows = live();
    var tbl = table();
    if (!rows.length && !tbl) return;
    var parts = rows.map(function (r) { return "id=" + encodeURIComponent(r.getAttribute("data-job")); });
    if (tbl) {
      parts.push("since=" + encodeURIComponent(tbl.getAttribute("data-newest") || ""));
      parts.push("here=" + encodeURIComponent(tbl.getAttribute("data-here") || ""));
      if (tbl.getAttribute("data-query")) parts.push(tbl.getAttribute("data-query"));
    }
    fetch("/admin/live?" + parts.join("&"), { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { if (r.status === 401) { window.location.reload(); } return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) return;
        rows.forEach(function (el) {
          var job = body.jobs[el.getAttribute("data-job")];
          if (job) update(el, job);
        });
        if (tbl) addRows(tbl, body);
      })
      .catch(function () { /* the next poll tries again */ });
  }

  // A page's refreshing part: fetched again and swapped in (open <details> stay open).
  function refresh(el) {
    fetch(el.getAttribute("data-refresh"), { credentials: "same-origin" })
      .then(function (r) { if (r.status === 401) { window.location.reload(); } return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var open = all("details[open][id]", el).map(function (d) { return d.id; });
        el.innerHTML = html;
        open.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
        syncClock(); tickBeats();
      })
      .catch(function () { /* the next refresh tries again */ });
  }

  function syncClock() {
    var stamp = document.querySelector("[data-now]");
    if (stamp) clockOffset = Number(stamp.getAttribute("data-now")) - Date.now();
  }
  function tickBeats() {
    var now = Date.now() + clockOffset;
    all("[data-beat-at]").forEach(function (cell) {
      cell.textContent = seconds(Math.max(0, (now - Number(cell.getAttribute("data-beat-at"))) / 1000)) + " ago";
    });
  }

  // The page has no inline script or style (its Content-Security-Policy allows neither):
  // the progress bars get their width, and the client filter its auto-submit, from here.
  function drawBars() {
    all("[data-role=bar][data-percent]").forEach(function (bar) {
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
    if (live().length || table()) setInterval(poll, POLL_MS);
    all("[data-refresh]").forEach(function (el) {
      setInterval(function () { refresh(el); }, Number(el.getAttribute("data-every")) || 10000);
    });
    syncClock();
    if (document.querySelector("[data-beat-at]")) { tickBeats(); setInterval(tickBeats, 1000); }
  });
})();
