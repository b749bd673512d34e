/* Winstar Edge console: the little that must change without a reload. No build step.
 * - relative times ("12 s ago") on every <time data-rel>;
 * - forms with data-confirm ask first;
 * - the edges list and an edge's page poll the REST API (/api/v1, with the session cookie:
 *   reads need no CSRF token) every 2 s and update the cells marked data-field/data-kind;
 * - an edge's Downlinks tab fetches its rows again (server-rendered) and swaps those that changed;
 * - a downlink's payload is fetched on demand into a dialog. */
(function () {
  "use strict";
  var EVERY_MS = 2000;

  function rel(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) return iso;
    var s = Math.round((Date.now() - t) / 1000);
    if (s < 0) s = 0;
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    if (s < 30 * 86400) return Math.floor(s / 86400) + " d ago";
    return new Date(t).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }
  function tick() {
    document.querySelectorAll("time[data-rel]").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      if (iso) el.textContent = rel(iso);
    });
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function timeEl(iso, empty) {
    if (!iso) return el("span", "muted", empty === null ? "\u2014" : empty);
    var t = el("time", "", rel(iso));
    t.setAttribute("datetime", iso);
    t.setAttribute("data-rel", "");
    t.title = iso;
    return t;
  }
  var SYNC_WORDS = { none: "never synced", pending: "requested", running: "running", done: "done", failed: "failed" };

  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }

  /* one cell (data-field, data-kind) from the API's JSON */
  function render(cell, value) {
    var kind = cell.getAttribute("data-kind");
    var sig = JSON.stringify(value === undefined ? null : value);
    if (cell.getAttribute("data-shown") === sig) return;
    var first = !cell.hasAttribute("data-shown");
    cell.setAttribute("data-shown", sig);
    var node;
    if (kind === "connected") {
      node = el("span", "badge " + (value ? "st-connected" : "st-offline"), value ? "connected" : "offline");
    } else if (kind === "count") {
      node = el("span", "count" + (value ? " " + (cell.getAttribute("data-warn") || "") : ""), String(value || 0));
    } else if (kind === "time") {
      node = timeEl(value, cell.getAttribute("data-empty"));
    } else if (kind === "sync") {
      node = el("span", "badge sy-" + value, SYNC_WORDS[value] || value);
    } else if (kind === "sync-counts") {
      var parts = [];
      if (value && value.state !== "none") {
        ["added", "updated", "removed", "unchanged"].forEach(function (k) {
          if (value[k] !== null && value[k] !== undefined) parts.push(value[k] + " " + k);
        });
        var text = parts.join(", ");
        if (value.failed) text += " \u00b7 " + value.failed + " failed";
        if (value.held) text += " \u00b7 " + value.held + " held";
        if (value.bytes !== null && value.bytes !== undefined) text += " \u00b7 " + value.bytes + " bytes";
        cell.textContent = text;
      } else {
        cell.textContent = "";
      }
      return;
    } else if (kind === "show-if") {
      cell.hidden = !value;
      return;
    } else {
      cell.textContent = value === null || value === undefined || value === "" ? "\u2014" : String(value);
      return;
    }
    cell.replaceChildren(node);
    var row = !first && cell.closest("tr");
    if (row) { row.classList.remove("flash"); void row.offsetWidth; row.classList.add("flash"); }
  }
  function fill(root, data) {
    root.querySelectorAll("[data-field]").forEach(function (cell) {
      var field = cell.getAttribute("data-field");
      render(cell, get(data, field));
    });
  }

  function fetchJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (r.status === 401) { window.location.reload(); throw new Error("signed out"); }
      if (!r.ok) throw new Error(url + ": " + r.status);
      return r.json();
    });
  }

  /* run fn every EVERY_MS, never two at once, not while the tab is hidden */
  function poll(fn) {
    var busy = false;
    function run() {
      if (busy || document.hidden) return;
      busy = true;
      Promise.resolve().then(fn).catch(function () {}).then(function () { busy = false; });
    }
    run();
    return setInterval(run, EVERY_MS);
  }

  function liveEdges(table) {
    poll(function () {
      return fetchJSON(table.getAttribute("data-live-edges")).then(function (edges) {
        edges.forEach(function (e) {
          var row = table.querySelector('tr[data-edge-id="' + e.id + '"]');
          if (row) fill(row, e);
        });
      });
    });
  }

  function liveEdge(root) {
    var rows = root.querySelector("tbody[data-rows-url]");
    var lastSig = null;
    poll(function () {
      return fetchJSON(root.getAttribute("data-live-edge")).then(function (edge) {
        fill(root, edge);
        var sig = JSON.stringify([edge.pending, edge.failed, edge.held, edge.sync]);
        if (rows && sig !== lastSig) {
          lastSig = sig;
          return refreshRows(rows);
        }
      });
    });
    if (rows) setInterval(function () { if (!document.hidden) refreshRows(rows); }, EVERY_MS * 2.5);
  }

  /* the tab's rows again; a row whose status did not change is kept (with what it shows) */
  var refreshing = false;
  function refreshRows(tbody) {
    if (refreshing) return;
    refreshing = true;
    return fetch(tbody.getAttribute("data-rows-url"), { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var tpl = document.createElement("template");
        tpl.innerHTML = "<table><tbody>" + html + "</tbody></table>";
        var old = {};
        Array.prototype.forEach.call(tbody.rows, function (r) { if (r.dataset.seq) old[r.dataset.seq] = r; });
        var next = Array.prototype.map.call(tpl.content.querySelectorAll("tbody > tr"), function (r) {
          var o = r.dataset.seq && old[r.dataset.seq];
          if (o && o.dataset.sig === r.dataset.sig) return o;
          if (Object.keys(old).length) r.classList.add("flash");
          return r;
        });
        tbody.replaceChildren.apply(tbody, next);
        tick();
      })
      .catch(function () {})
      .then(function () { refreshing = false; });
  }

  function showPayload(link) {
    var dialog = document.getElementById("payload-dialog");
    if (!dialog || !dialog.showModal) return false;
    var body = dialog.querySelector("[data-dialog-body]");
    dialog.querySelector("[data-dialog-title]").textContent = link.getAttribute("data-title") || "Payload";
    body.textContent = "loading\u2026";
    dialog.showModal();
    fetchJSON(link.getAttribute("data-payload")).then(function (d) {
      body.textContent = JSON.stringify(d.payload === undefined ? d : d.payload, null, 2);
      if (d.error) body.textContent = "error: " + d.error + "\n\n" + body.textContent;
    }).catch(function (e) { body.textContent = String(e); });
    return true;
  }

  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });
  document.addEventListener("click", function (ev) {
    var link = ev.target.closest && ev.target.closest("[data-payload]");
    if (link && showPayload(link)) { ev.preventDefault(); return; }
    var copy = ev.target.closest && ev.target.closest("[data-copy]");
    if (copy && navigator.clipboard) {
      navigator.clipboard.writeText(copy.getAttribute("data-copy")).then(function () {
        copy.textContent = "Copied";
        setTimeout(function () { copy.textContent = "Copy"; }, 1500);
      }, function () {});
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
    document.querySelectorAll("[data-live-edges]").forEach(liveEdges);
    document.querySelectorAll("[data-live-edge]").forEach(liveEdge);
  });
})();
