/* The search page, served (data from /api) or as an offline report (data embedded in
   window.NAS.data). Draws the figures nas.plots built, keeps them live while the search
   runs, and renders the sortable, filterable candidate table. No dependencies but Plotly. */
(function () {
  "use strict";
  var NAS = window.NAS;
  var ACTIVE = ["running", "stopping"];
  var PAGE_SIZE = 100;
  var POLL_MS = 2500;
  var PLOT_CONFIG = {responsive: true, displaylogo: false,
                     modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"]};
  var state = {
    search: NAS.search, rows: [], axes: NAS.axes.slice(), view3d: false,
    sortKey: "trial_number", sortDir: 1, page: 0, clickBound: false
  };

  function $(id) { return document.getElementById(id); }
  function esc(value) {
    return String(value).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function fmt(v) {
    if (v === null || v === undefined || v === "") return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v) && Math.abs(v) >= 1000) return v.toLocaleString("en-US");
      return String(Number(v.toPrecision(4)));
    }
    return String(v);
  }
  // One date format everywhere (nas.dates.format_when): "2026-12-01 21:46 UTC".
  function pad2(n) { return (n < 10 ? "0" : "") + n; }
  function when(iso) {
    if (!iso) return "–";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return d.getUTCFullYear() + "-" + pad2(d.getUTCMonth() + 1) + "-" + pad2(d.getUTCDate()) + " " +
      pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes()) + " UTC";
  }
  function duration(a, b) {
    var s = Math.max(0, Math.round((Date.parse(b) - Date.parse(a)) / 1000));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? h + "h " + m + "m" : m ? m + "m " + (s % 60) + "s" : s + "s";
  }
  function active() { return ACTIVE.indexOf(state.search.status) >= 0; }
  function getJSON(url) {
    return fetch(url, {headers: {Accept: "application/json"}}).then(function (r) {
      if (r.ok) return r.json();
      return r.json().catch(function () { return {}; }).then(function (body) {
        throw new Error(typeof body.detail === "string" ? body.detail : "HTTP " + r.status);
      });
    });
  }
  function banner(message, kind) {
    var el = $("banner");
    el.textContent = message || "";
    el.className = "banner" + (message ? " " + (kind || "warn") : " hidden");
  }

  // ----- header ------------------------------------------------------------------------
  function renderStats() {
    var s = state.search, done = s.n_complete + s.n_failed + s.n_pruned + (s.n_infeasible || 0);
    $("status").textContent = s.status;
    $("status").className = "badge status-" + s.status.replace(" ", "-");
    $("st-progress").textContent = done + " / " + s.trials;
    $("st-bar").style.width = Math.min(100, s.trials ? 100 * done / s.trials : 0) + "%";
    $("st-complete").textContent = s.n_complete;
    $("st-other").textContent = [s.n_failed ? s.n_failed + " failed" : "",
      s.n_running ? s.n_running + " running" : "", s.n_interrupted ? s.n_interrupted + " interrupted" : "", s.n_pruned ? s.n_pruned + " pruned" : "",
      s.n_infeasible ? s.n_infeasible + " infeasible" : ""]
      .filter(Boolean).join(" · ") || "none failed";
    $("st-hv").textContent = fmt(s.hypervolume);
    $("st-ref").textContent = s.reference_point
      ? "reference " + s.reference_point.map(fmt).join(", ") : "reference not fixed yet";
    $("st-started").textContent = when(s.started_at || s.created_at);
    $("st-finished").textContent = s.finished_at
      ? "finished " + when(s.finished_at) + " (" + duration(s.started_at || s.created_at, s.finished_at) + ")"
      : active() ? "running for " + duration(s.started_at || s.created_at, new Date().toISOString()) : "";
    $("live").classList.toggle("hidden", NAS.offline || !active());
    var stop = $("stop");
    if (stop) {
      stop.classList.toggle("hidden", !active());
      stop.disabled = s.status === "stopping";
      stop.textContent = s.status === "stopping" ? "Stopping…" : "Stop search";
    }
  }

  // ----- figures -----------------------------------------------------------------------
  function loadFigures(parts) {
    if (NAS.offline) {
      var f = NAS.data.figures, key = state.axes.join("|");
      return Promise.resolve({version: f.version, pareto: f.pareto[key], pareto3d: f.pareto3d,
                              missing: f.pareto[key] ? null : state.axes,
                              hypervolume: f.hypervolume, parallel: f.parallel,
                              front_size: f.front_size, knee_id: f.knee_id, knee_trial: f.knee_trial,
                              warnings: f.warnings, rungs: f.rungs, tokens_spent: f.tokens_spent,
                              retimes: f.retimes || []});
    }
    var q = new URLSearchParams({x: state.axes[0], y: state.axes[1]});
    parts.forEach(function (p) { q.append("part", p); });
    return getJSON(NAS.api.figures + "?" + q.toString());
  }
  function draw(id, fig) {
    var el = $(id);
    if (!el || !fig) return Promise.resolve();
    if (!el.classList.contains("js-plotly-plot")) el.innerHTML = "";
    return Plotly.react(el, fig.data, fig.layout, PLOT_CONFIG);
  }
  function paretoPart() { return state.view3d ? "pareto3d" : "pareto"; }
  function drawPareto(figs) {
    var fig = figs[paretoPart()];
    var el = $("pareto");
    if (!fig) {
      if (el.classList.contains("js-plotly-plot")) {  // a note where a plot was: start afresh
        Plotly.purge(el);
        el.classList.remove("js-plotly-plot");
        state.clickBound = false;
      }
      el.innerHTML = figs.missing && !state.view3d
        ? '<p class="empty">This report embeds the plot of ' + esc(figs.missing[0]) + " against " +
          esc(figs.missing[1]) + " only with the objectives or against the first objective; " +
          "<code>nas serve</code> draws any pair.</p>"
        : '<p class="empty">A Pareto plot needs two objectives.</p>';
      return Promise.resolve();
    }
    if (state.view3d !== (el.dataset.view === "3d") && el.classList.contains("js-plotly-plot")) {
      Plotly.purge(el);  // 2-D and 3-D layouts do not morph into each other
      state.clickBound = false;
    }
    el.dataset.view = state.view3d ? "3d" : "2d";
    return draw("pareto", fig).then(function () {
      if (!state.clickBound) {
        el.on("plotly_click", onPointClick);
        state.clickBound = true;
      }
      el.dataset.points = String(countPoints(fig));
    });
  }
  function countPoints(fig) {
    return fig.data.filter(function (t) { return t.customdata; })
      .reduce(function (n, t) { return n + t.customdata.length; }, 0);
  }
  function onPointClick(event) {
    var point = event && event.points && event.points[0];
    if (!point || point.customdata === undefined || point.customdata === null) return;
    var id = Array.isArray(point.customdata) ? point.customdata[0] : point.customdata;
    if (NAS.offline) {
      var row = state.rows.filter(function (r) { return r.id === id; })[0];
      if (!row) return;
      $("filter").value = "#" + row.trial_number;
      state.page = 0;
      renderTable();
      $("candidates").scrollIntoView({behavior: "smooth", block: "start"});
    } else {
      window.location.href = "/candidates/" + encodeURIComponent(id);
    }
  }
  function renderFront(figs) {  // the front as analysed with the figures (not the snapshot)
    $("st-front").textContent = figs.front_size;
    $("st-knee").textContent = figs.knee_trial !== null && figs.knee_trial !== undefined
      ? "knee: trial " + figs.knee_trial : "";
    $("warnings").innerHTML = (figs.warnings || []).map(function (w) {
      return '<div class="banner warn">' + esc(w) + "</div>"; }).join("");
  }
  // The hypervolume plot's buttons (x: candidates or training tokens) survive a redraw.
  function drawHypervolume(fig) {
    var el = $("hypervolume"), menus = el && el.layout && el.layout.updatemenus;
    var active = menus && menus[0] ? menus[0].active || 0 : 0;
    return draw("hypervolume", fig).then(function () {
      var buttons = fig && fig.layout.updatemenus ? fig.layout.updatemenus[0].buttons : [];
      if (!active || !buttons[active]) return;
      var args = buttons[active].args, layout = {"updatemenus[0].active": active};
      Object.keys(args[1]).forEach(function (k) { layout[k] = args[1][k]; });
      return Plotly.update(el, args[0], layout);
    });
  }
  // Successive halving: how many candidates reached each rung and stopped there.
  function renderRungs(figs) {
    var body = $("rungs") && $("rungs").tBodies[0];
    if (!body || !figs.rungs) return;
    var n = figs.rungs.length, most = Math.max.apply(null, figs.rungs.map(function (r) { return r.reached; }).concat([1]));
    body.innerHTML = figs.rungs.map(function (r) {
      var on = r.reached - r.pruned, last = r.rung === n - 1;
      return '<tr data-rung="' + r.rung + '"><td>' + (r.rung + 1) + " of " + n + '</td><td class="num">' + fmt(r.tokens) +
        '</td><td class="num reached">' + r.reached + '</td><td class="num pruned">' +
        (r.pruned ? '<a href="#candidates" class="show-pruned" title="list the pruned candidates">' + r.pruned + "</a>" : "0") +
        '</td><td class="num">' + on + (last ? " complete" : "") + '</td><td class="bar-cell"><div class="rung-bar">' +
        '<span class="went" style="width:' + (100 * on / most) + '%"></span><span class="cut" style="width:' +
        (100 * r.pruned / most) + '%"></span></div></td></tr>';
    }).join("");
    $("tokens-spent").textContent = figs.tokens_spent === null || figs.tokens_spent === undefined ? "" :
      fmt(figs.tokens_spent) + " training tokens spent on every rung of every candidate.";
  }
  // Re-timings of the front: who was timed together, who entered or left, what is unresolved.
  function refs(list) {
    if (!list || !list.length) return '<span class="muted">none</span>';
    return list.map(function (c) {
      var label = "trial " + (c.trial_number === null || c.trial_number === undefined ? "?" : c.trial_number);
      return NAS.offline ? esc(label) : '<a href="' + esc(c.url) + '">' + esc(label) + "</a>";
    }).join(", ");
  }
  function renderRetimes(list) {
    var card = $("retimes-card");
    if (!card || !list) return;
    card.classList.toggle("hidden", !list.length);
    $("retimes").tBodies[0].innerHTML = list.slice().reverse().map(function (r) {
      var pairs = r.unresolved.map(function (u) {
        return "trial " + u.a.trial_number + " / trial " + u.b.trial_number + " on " + u.metric; }).join("\n");
      return '<tr data-number="' + r.number + '"><td class="num">' + r.number + "</td><td class=\"small\">" +
        esc(when(r.created_at)) + '</td><td class="small" title="' + esc(r.machine ? r.machine.hash : "") + '">' +
        esc(r.machine ? r.machine.summary : "not recorded") + '</td><td class="small">' + esc(r.profiles.join(", ")) +
        '</td><td class="num" title="' + esc(r.members.map(function (c) { return "trial " + c.trial_number; }).join(", ")) +
        '">' + r.members.length + '</td><td class="list entered">' + refs(r.entered) + '</td><td class="list left">' +
        refs(r.left) + '</td><td class="num unresolved-count"' + (pairs ? ' title="' + esc(pairs) + '"' : "") + ">" +
        r.n_unresolved + '</td><td class="num">' + r.rounds + '</td><td class="num">' + fmt(r.seconds) + "</td></tr>";
    }).join("");
    var last = list[list.length - 1];
    $("retimes-note").textContent = last ? "The candidates table shows the values of re-timing " + last.number +
      " with their 95% intervals; its " + last.n_unresolved + " unresolved pair" + (last.n_unresolved === 1 ? " is" : "s are") +
      " marked ≈." : "";
  }
  function showPruned(e) {
    if (!e.target.closest(".show-pruned")) return;
    $("state-filter").value = "pruned";
    state.page = 0;
    renderTable();
  }
  function refreshFigures() {
    return loadFigures([paretoPart(), "hypervolume", "parallel", "rungs", "retimes"]).then(function (figs) {
      state.dataVersion = figs.version;
      renderFront(figs);
      renderRungs(figs);
      renderRetimes(figs.retimes);
      return Promise.all([drawPareto(figs), drawHypervolume(figs.hypervolume),
                          draw("parallel", figs.parallel)]);
    });
  }
  function changeAxes() {
    var x = $("ax-x").value, y = $("ax-y").value;
    if (x === y) {  // keep two different metrics: swap instead
      var other = x === state.axes[0] ? state.axes[1] : state.axes[0];
      if (this === $("ax-x")) { $("ax-y").value = other; y = other; } else { $("ax-x").value = other; x = other; }
    }
    state.axes = [x, y];
    loadFigures([paretoPart()]).then(drawPareto).catch(function (e) { banner(e.message, "bad"); });
  }

  // ----- candidate table ---------------------------------------------------------------
  var objectives = state.search.objectives.map(function (o) { return o.metric; });
  var columns = [
    {key: "trial_number", label: "trial", num: true, html: function (r) {
      return NAS.offline ? String(r.trial_number)
        : '<a href="' + esc(r.url) + '">' + r.trial_number + "</a>"; }},
    {key: "state", label: "state", html: function (r) {
      return '<span class="badge state-' + esc(r.state) + '">' + esc(r.state) + "</span>"; }},
    {key: "front", label: "front", get: function (r) { return r.knee ? 2 : r.on_front ? 1 : 0; },
     html: function (r) {
       if (r.knee) return '<span class="front-mark" title="knee: the best compromise">★ knee</span>';
       if (r.on_front) return '<span class="front-mark" title="on the Pareto front">●</span>';
       return r.feasible === false ? '<span class="bad small" title="violates a constraint">infeasible</span>' : "";
     }},
    {key: "description", label: "architecture", html: function (r) {
      return '<span class="arch">' + esc(r.description) + "</span>"; }},
    {key: "params", label: "params", num: true}
  ].concat(objectives.filter(function (m) { return m !== "params"; }).map(function (m) {  // a column already
    return {key: "m:" + m, label: m, num: true, get: function (r) { return r.metrics[m]; },
            html: function (r) { return metricCell(r, m); }};
  })).concat(state.search.fidelity ? [{key: "tokens", label: "tokens", num: true}] : []).concat([
    {key: "error", label: "error", html: function (r) {
      if (!r.error) return "";
      var short = r.error.length > 140 ? r.error.slice(0, 140) + "…" : r.error;
      return '<span class="error" title="' + esc(r.error) + '">' + esc(short) + "</span>"; }}
  ]);
  function value(col, row) { return col.get ? col.get(row) : row[col.key]; }
  // An objective's value; re-timed, with its 95% interval, and ≈ where its order against
  // another front member is not resolved (the tooltip names the other members).
  function metricCell(r, m) {
    var out = esc(fmt(r.metrics[m])), ci = r.intervals && r.intervals[m];
    if (ci) out += ' <span class="interval" title="95% interval">[' + esc(fmt(ci[0])) + ", " + esc(fmt(ci[1])) + "]</span>";
    var others = (r.unresolved || []).filter(function (u) { return u.metric === m; });
    if (others.length) {
      out += ' <span class="unresolved" title="order not resolved against ' + esc(others.map(function (u) {
        return "trial " + u.trial_number; }).join(", ")) + ' (95% intervals overlap)">≈</span>';
    }
    return out;
  }

  function renderHead() {
    $("candidates").tHead.innerHTML = "<tr>" + columns.map(function (c) {
      var mark = c.key === state.sortKey ? (state.sortDir > 0 ? " ▲" : " ▼") : "";
      return '<th data-key="' + esc(c.key) + '" class="' + (c.num ? "num" : "") + '" title="sort">' +
        esc(c.label) + '<span class="sort">' + mark + "</span></th>";
    }).join("") + "</tr>";
  }
  function matches(row, text, wanted, frontOnly) {
    if (wanted && row.state !== wanted) return false;
    if (frontOnly && !row.on_front) return false;
    if (!text) return true;
    if (text.charAt(0) === "#") return String(row.trial_number) === text.slice(1);  // "#3": trial 3
    return (row.description + " " + row.state + " " + row.error + " trial " + row.trial_number +
            " " + row.arch_hash).toLowerCase().indexOf(text) >= 0;
  }
  function renderTable() {
    var text = $("filter").value.trim().toLowerCase();
    var wanted = $("state-filter").value, frontOnly = $("front-only").checked;
    var col = columns.filter(function (c) { return c.key === state.sortKey; })[0] || columns[0];
    var rows = state.rows.filter(function (r) { return matches(r, text, wanted, frontOnly); });
    rows.sort(function (a, b) {
      var va = value(col, a), vb = value(col, b);
      var na = va === null || va === undefined || va === "", nb = vb === null || vb === undefined || vb === "";
      if (na || nb) return na === nb ? a.trial_number - b.trial_number : na ? 1 : -1;  // blanks last
      var cmp = typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb));
      return cmp * state.sortDir || a.trial_number - b.trial_number;
    });
    var pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * PAGE_SIZE, shown = rows.slice(start, start + PAGE_SIZE);
    $("candidates").tBodies[0].innerHTML = shown.length ? shown.map(function (r) {
      return '<tr class="' + (r.on_front ? "on-front" : "") + (r.state === "failed" ? " failed" : "") +
        '" data-id="' + r.id + '">' + columns.map(function (c) {
          var v = value(c, r);
          return '<td class="' + (c.num ? "num" : "") + '">' + (c.html ? c.html(r) : esc(fmt(v))) + "</td>";
        }).join("") + "</tr>";
    }).join("") : '<tr><td class="empty" colspan="' + columns.length + '">No candidates match.</td></tr>';
    $("cand-count").textContent = rows.length === state.rows.length
      ? state.rows.length + " in all" : rows.length + " of " + state.rows.length + " match";
    $("page-info").textContent = rows.length
      ? "rows " + (start + 1) + "–" + (start + shown.length) + " of " + rows.length : "";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    $("table-note").classList.toggle("hidden", !state.rows.some(function (r) {
      return (r.unresolved && r.unresolved.length) || (r.intervals && Object.keys(r.intervals).length); }));
  }
  function loadRows() {
    var rows = NAS.offline ? Promise.resolve(NAS.data.candidates) : getJSON(NAS.api.candidates);
    return rows.then(function (data) { state.rows = data; renderTable(); });
  }

  // ----- live updates and stopping -----------------------------------------------------
  // The search's version (cheap to read) changes with every write; the figures say which
  // version they show. The server may answer with the previous version while it rebuilds,
  // so polling goes on until the drawing has caught up, even after the search has ended.
  function behind() { return state.search.version !== state.dataVersion; }
  function poll() {
    getJSON(NAS.api.search).then(function (s) {
      state.search = s;
      renderStats();
      banner("");
      return behind() ? Promise.all([refreshFigures(), loadRows()]) : null;
    }).catch(function (e) {
      banner("Live update failed: " + e.message + " (retrying)");
    }).then(function () {
      if (active() || behind()) setTimeout(poll, POLL_MS);
    });
  }
  function stopSearch(confirmed) {
    if (!confirmed && !window.confirm("Stop search " + NAS.name + "? Running trials are cancelled; " +
                                      "it can be resumed later with nas search.")) return;
    var token = window.sessionStorage.getItem("nas-token");
    var headers = token ? {Authorization: "Bearer " + token} : {};
    fetch(NAS.api.stop, {method: "POST", headers: headers}).then(function (r) {
      if (r.status === 401) {
        window.sessionStorage.removeItem("nas-token");
        var given = window.prompt("This server needs its token to stop a search:");
        if (given) { window.sessionStorage.setItem("nas-token", given); stopSearch(true); }
        return;
      }
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : "HTTP " + r.status);
        state.search.status = body.status;
        renderStats();
      });
    }).catch(function (e) { banner("Could not stop: " + e.message, "bad"); });
  }

  // ----- wiring ------------------------------------------------------------------------
  function init() {
    renderStats();
    renderHead();
    $("candidates").tHead.addEventListener("click", function (e) {
      var th = e.target.closest("th");
      if (!th) return;
      var key = th.getAttribute("data-key");
      state.sortDir = state.sortKey === key ? -state.sortDir : 1;
      state.sortKey = key;
      renderHead();
      renderTable();
    });
    $("filter").addEventListener("input", function () { state.page = 0; renderTable(); });
    $("state-filter").addEventListener("change", function () { state.page = 0; renderTable(); });
    $("front-only").addEventListener("change", function () { state.page = 0; renderTable(); });
    $("prev").addEventListener("click", function () { state.page -= 1; renderTable(); });
    $("next").addEventListener("click", function () { state.page += 1; renderTable(); });
    if ($("ax-x")) {
      $("ax-x").addEventListener("change", changeAxes);
      $("ax-y").addEventListener("change", changeAxes);
    }
    if ($("view3d")) {
      $("view3d").addEventListener("change", function () {
        state.view3d = this.checked;
        $("ax-x").disabled = $("ax-y").disabled = state.view3d;
        loadFigures([paretoPart()]).then(drawPareto).catch(function (e) { banner(e.message, "bad"); });
      });
    }
    if ($("stop")) $("stop").addEventListener("click", function () { stopSearch(false); });
    if ($("rungs")) $("rungs").addEventListener("click", showPruned);
    Promise.all([refreshFigures(), loadRows()]).catch(function (e) {
      banner("Could not load the search: " + e.message, "bad");
    }).then(function () {
      document.body.setAttribute("data-ready", "1");
      if (!NAS.offline && (active() || behind())) setTimeout(poll, POLL_MS);
    });
  }
  init();
})();
