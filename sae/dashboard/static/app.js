// SAE feature browser: plain JavaScript, no libraries, no network beyond this folder (and the
// local rating server when the page is served by it). Data files call DASH.summary / vocab /
// index / chunk; the page loads them with <script> tags, so it also works from file://.
"use strict";

window.DASH = (function () {
  const S = {
    summary: null, vocab: {}, index: {}, chunks: {}, waiting: {}, server: null,
    kind: null, sortKey: "density", sortDir: -1, filter: "", minLogDensity: -99, page: 0, pageSize: 100,
    order: null, orderFor: null,
  };

  // ---------------------------------------------------------------- helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "style") el.style.cssText = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const fmt = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toPrecision(d));
  const tokText = (id) => (id in S.vocab ? S.vocab[id] : "⟨" + id + "⟩").replace(/\n/g, "⏎");
  const unitName = (kind) => (kind === "neurons" ? "Neuron" : "Feature");

  function loadScript(src, key) {
    if (!S.waiting[key]) {
      S.waiting[key] = new Promise((resolve, reject) => {
        S.waiting[key + ":resolve"] = resolve;
        const el = document.createElement("script");
        el.src = src;
        el.onerror = () => reject(new Error("could not load " + src));
        document.body.append(el);
      });
    }
    return S.waiting[key];
  }
  function arrived(key, value) {
    const resolve = S.waiting[key + ":resolve"];
    if (resolve) resolve(value);
    else S.waiting[key] = Promise.resolve(value);
  }
  const loadIndex = (kind) => S.index[kind] ? Promise.resolve(S.index[kind]) : loadScript(`data/${kind}/index.js`, "index:" + kind);
  function loadUnit(kind, unit) {
    const p = Math.floor(unit / S.index[kind].part_units);
    const name = String(p).padStart(4, "0");
    const got = S.chunks[kind + ":" + p] ? Promise.resolve(S.chunks[kind + ":" + p]) : loadScript(`data/${kind}/chunk_${name}.js`, `chunk:${kind}:${p}`);
    return got.then((units) => units[unit - p * S.index[kind].part_units]);
  }

  async function api(method, path, body) {
    const res = await fetch(path, { method, headers: body ? { "Content-Type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(data.error || res.status + " " + res.statusText);
    return data;
  }

  async function detectServer() {
    if (!location.protocol.startsWith("http")) { S.server = false; return; }
    try { S.server = await api("GET", "api/health"); } catch (e) { S.server = false; }
  }

  // ---------------------------------------------------------------- charts
  function barChart(counts, labels, width = 420, height = 110) {
    const max = Math.max(1, ...counts);
    const bw = width / counts.length;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", width); svg.setAttribute("height", height + 16);
    counts.forEach((c, i) => {
      const r = document.createElementNS(svg.namespaceURI, "rect");
      const bh = (c / max) * height;
      r.setAttribute("x", i * bw); r.setAttribute("y", height - bh); r.setAttribute("width", Math.max(1, bw - 1)); r.setAttribute("height", bh);
      r.setAttribute("class", "bar");
      const t = document.createElementNS(svg.namespaceURI, "title"); t.textContent = `${labels[i]}: ${c}`; r.append(t);
      svg.append(r);
    });
    [0, counts.length - 1].forEach((i) => {
      const t = document.createElementNS(svg.namespaceURI, "text");
      t.setAttribute("x", i === 0 ? 0 : width); t.setAttribute("y", height + 13); t.setAttribute("font-size", "10");
      t.setAttribute("text-anchor", i === 0 ? "start" : "end"); t.textContent = labels[i]; svg.append(t);
    });
    return svg;
  }

  function densityHistogram(density) {
    const lo = -7, hi = 0, nb = 28, counts = new Array(nb).fill(0);
    let dead = 0;
    for (const d of density) {
      if (!(d > 0)) { dead++; continue; }
      const b = Math.min(nb - 1, Math.max(0, Math.floor(((Math.log10(d) - lo) / (hi - lo)) * nb)));
      counts[b]++;
    }
    const labels = counts.map((_, i) => "log10 density " + (lo + (i * (hi - lo)) / nb).toFixed(2));
    return h("div", {}, barChart(counts, labels), h("div", { class: "note" }, `log10 density on held-out text, ${lo} … ${hi}; ${dead} never fired`));
  }

  // ---------------------------------------------------------------- index
  function computeOrder(kind) {
    const ix = S.index[kind];
    const key = [kind, S.sortKey, S.sortDir, S.filter, S.minLogDensity].join("|");
    if (S.orderFor === key) return S.order;
    const n = ix.n_units, q = S.filter.toLowerCase(), minD = Math.pow(10, S.minLogDensity);
    if (!ix._search) ix._search = ix.top_tokens.map((ts, u) => (ts.map(tokText).join("\u0001") + "\u0001" + (ix.explanation[u] || "")).toLowerCase());
    const keep = [];
    for (let u = 0; u < n; u++) {
      if (S.minLogDensity > -99 && !(ix.density[u] >= minD)) continue;
      if (q && ix._search[u].indexOf(q) < 0) continue;
      keep.push(u);
    }
    const col = { unit: (u) => u, density: (u) => ix.density[u], max_activation: (u) => ix.max_activation[u],
      spearman: (u) => ix.spearman[u] ?? -Infinity, rubric: (u) => ix.rubric[u] ?? -Infinity,
      fired_contexts: (u) => ix.fired_contexts[u] }[S.sortKey];
    keep.sort((a, b) => S.sortDir * (col(a) - col(b)) || a - b);
    S.order = keep; S.orderFor = key;
    return keep;
  }

  function renderRows(kind, tbody, pager) {
    const ix = S.index[kind], order = computeOrder(kind);
    const pages = Math.max(1, Math.ceil(order.length / S.pageSize));
    S.page = Math.min(S.page, pages - 1);
    const rows = order.slice(S.page * S.pageSize, (S.page + 1) * S.pageSize).map((u) => h("tr", { "data-unit": u },
      h("td", { class: "num" }, h("a", { href: `#/u/${kind}/${u}` }, u)),
      h("td", { class: "num" }, fmt(ix.density[u])),
      h("td", { class: "num" }, fmt(ix.max_activation[u])),
      h("td", { class: "num" }, ix.fired_contexts[u]),
      h("td", {}, ix.top_tokens[u].map((t) => h("span", { class: "tokcell" }, tokText(t))).flatMap((x) => [x, " "])),
      h("td", {}, ix.explanation[u] || ""),
      h("td", { class: "num" }, fmt(ix.spearman[u], 2)),
      h("td", { class: "num" }, fmt(ix.rubric[u], 2))));
    tbody.replaceChildren(...rows);
    pager.replaceChildren(
      h("button", { id: "prev", disabled: S.page === 0 ? true : null, onclick: () => { S.page--; renderRows(kind, tbody, pager); } }, "‹ prev"),
      ` ${order.length ? S.page * S.pageSize + 1 : 0}–${Math.min(order.length, (S.page + 1) * S.pageSize)} of ${order.length} `,
      h("button", { id: "next", disabled: S.page >= pages - 1 ? true : null, onclick: () => { S.page++; renderRows(kind, tbody, pager); } }, "next ›"));
  }

  async function renderIndex(kind) {
    const ix = await loadIndex(kind);
    const sm = S.summary;
    const metrics = Object.entries(sm.metrics || {}).filter(([, v]) => typeof v === "number");
    const head = [["unit", "#"], ["density", "density"], ["max_activation", "max act"], ["fired_contexts", "contexts"],
      [null, "top tokens"], [null, "explanation"], ["spearman", "spearman"], ["rubric", "rubric"]];
    const tbody = h("tbody"), pager = h("div", { class: "pager" });
    const ths = head.map(([key, label]) => h("th", key ? { "data-key": key, class: key === S.sortKey ? "sorted" : null, "data-dir": S.sortDir > 0 ? " ▲" : " ▼" } : {}, label));
    const thead = h("thead", {}, h("tr", {}, ths));
    thead.addEventListener("click", (e) => {
      const key = e.target.getAttribute && e.target.getAttribute("data-key");
      if (!key) return;
      S.sortDir = key === S.sortKey ? -S.sortDir : -1; S.sortKey = key; S.page = 0;
      ths.forEach((th) => { th.classList.toggle("sorted", th.getAttribute("data-key") === key); th.setAttribute("data-dir", S.sortDir > 0 ? " ▲" : " ▼"); });
      renderRows(kind, tbody, pager);
    });
    const filter = h("input", { id: "filter", type: "search", placeholder: "token or explanation, e.g.  Paris", value: S.filter,
      oninput: (e) => { S.filter = e.target.value; S.page = 0; renderRows(kind, tbody, pager); } });
    const minD = h("input", { id: "min-density", type: "number", step: "0.5", placeholder: "-99", value: S.minLogDensity > -99 ? S.minLogDensity : "",
      oninput: (e) => { S.minLogDensity = e.target.value === "" ? -99 : Number(e.target.value); S.page = 0; renderRows(kind, tbody, pager); } });
    document.getElementById("app").replaceChildren(
      h("section", {}, h("h2", {}, `${ix.n_units.toLocaleString()} ${kind}`),
        h("div", { class: "note" }, `SAE ${sm.sae_path || ""} · ${sm.hook || ""} · ${ix.n_tokens.toLocaleString()} held-out tokens`),
        h("div", { class: "grid" }, densityHistogram(ix.density),
          h("table", { id: "metrics" }, metrics.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, fmt(v, 4))))))),
      h("section", {}, h("div", { class: "controls" }, h("label", {}, "filter ", filter), h("label", {}, "min log10 density ", minD)),
        h("table", { id: "units-table" }, thead, tbody), pager));
    renderRows(kind, tbody, pager);
    if (S.server) {  // ratings saved since the site was written
      api("GET", "api/ratings").then((r) => {
        Object.assign(ix.rubric, r[kind] || {});
        if (S.sortKey === "rubric") S.orderFor = null;
        if (document.body.contains(tbody)) renderRows(kind, tbody, pager);
      }).catch(() => {});
    }
    document.body.setAttribute("data-ready", "index");
  }

  // ---------------------------------------------------------------- unit page
  function record(r, max) {
    const spans = r.tokens.map((t, i) => {
      const a = r.acts[i], alpha = max > 0 ? Math.max(0, Math.min(1, a / max)) : 0;
      return h("span", { class: "tok" + (a > 0 ? " on" : ""), title: `${JSON.stringify(tokText(t))}: ${a}`, "data-act": a,
        style: a > 0 ? `background: rgba(255, 112, 0, ${alpha.toFixed(3)})` : null }, tokText(t));
    });
    return h("div", { class: "record" }, h("span", { class: "max" }, fmt(r.max)), spans);
  }

  function tokenTable(id, title, rows, valueLabel) {
    if (!rows || !rows.length) return h("p", { class: "note" }, "none");
    return h("table", { id }, h("thead", {}, h("tr", {}, h("th", {}, title), h("th", {}, valueLabel))),
      h("tbody", {}, rows.map(([t, v]) => h("tr", {}, h("td", {}, h("span", { class: "tokcell" }, tokText(t))), h("td", { class: "num " + (v >= 0 ? "pos" : "neg") }, fmt(v))))));
  }

  function steeringTable(st) {
    if (!st) return h("p", { class: "note" }, "not precomputed for this unit");
    return h("div", {}, h("div", { class: "note" }, `clamped at ${fmt(st.value)} (${st.multiple} × max activation) at every position`),
      h("table", { class: "steering" }, h("thead", {}, h("tr", {}, h("th", {}, "prompt"), h("th", {}, "unclamped"), h("th", {}, "pinned"))),
        h("tbody", {}, st.samples.map((s) => h("tr", {}, h("td", {}, s.prompt), h("td", {}, s.unclamped), h("td", {}, s.pinned))))));
  }

  function ratingForm(onSave) {
    const rb = S.summary.rubric, status = h("span", { class: "status" });
    const rater = h("input", { name: "rater", id: "rater", required: true, maxlength: 64, value: localStorage.getItem("rater") || "" });
    const sets = rb.criteria.map((c) => h("fieldset", {}, h("legend", {}, c),
      rb.anchors[c].map((a, v) => h("label", { title: a }, h("input", { type: "radio", name: c, value: v, required: true }), ` ${v}`)),
      h("div", { class: "note" }, rb.anchors[c].map((a, v) => `${v}: ${a}`).join(" · "))));
    const note = h("textarea", { name: "note", maxlength: 2000, rows: 2, cols: 60 });
    const form = h("form", { class: "rating", id: "rating-form" }, h("label", {}, "rater ", rater), sets, h("div", {}, "note ", note),
      h("button", { type: "submit", id: "save-rating" }, "save rating"), " ", status);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const scores = {};
      for (const c of rb.criteria) scores[c] = Number(form.querySelector(`input[name="${c}"]:checked`).value);
      localStorage.setItem("rater", rater.value);
      try { status.textContent = "saving…"; await onSave({ rater: rater.value, scores, note: note.value }, status); }
      catch (err) { status.className = "status error"; status.textContent = String(err.message || err); }
    });
    return form;
  }

  function unitBody(u, kind, blind) {
    const max = u.max_activation, groups = {};
    for (const r of u.records) (groups[r.group] = groups[r.group] || []).push(r);
    const quantiles = Object.keys(groups).filter((g) => g !== "top").sort();
    const labels = u.histogram.map((_, i) => `activation ${fmt((i * max) / u.histogram.length)}–${fmt(((i + 1) * max) / u.histogram.length)}`);
    const it = u.interp, ab = u.ablation;
    return [
      h("section", {}, h("div", {}, `density ${fmt(u.density)} · max activation ${fmt(max)} · mean when active ${fmt(u.mean_activation)} · fired in ${u.fired_contexts} contexts`),
        it ? h("div", { id: "explanation" }, h("b", {}, "Explanation: "), it.explanation,
          h("span", { class: "note" }, ` (${it.method}, ${it.split}: Spearman ${fmt(it.spearman, 2)}; with another unit's explanation ${fmt(it.control_spearman, 2)})`)) : null,
        h("div", {}, h("h3", {}, "Activation histogram"), barChart(u.histogram, labels))),
      h("section", { id: "top-contexts" }, h("h3", {}, "Top contexts"), (groups.top || []).map((r) => record(r, max))),
      h("section", { id: "quantiles" }, h("h3", {}, "Quantile samples"), quantiles.length ? quantiles.map((g) => h("div", {}, h("div", { class: "note" }, g), groups[g].map((r) => record(r, max)))) : h("p", { class: "note" }, "none")),
      h("section", { class: "grid" },
        h("div", {}, h("h3", {}, "Logit weights"), u.logits ? h("div", { class: "note" }, S.summary.norm_note) : null,
          u.logits ? h("div", { class: "grid" }, tokenTable("logit-promoted", "promoted", u.logits.promoted, "weight"), tokenTable("logit-suppressed", "suppressed", u.logits.suppressed, "weight"))
            : h("p", { class: "note", id: "logits-unavailable" }, `not available: ${S.summary.hook || "this hook"} is not the residual stream (nor added straight into it), so a unit's direction there has no direct path to the logits`)),
        h("div", {}, h("h3", {}, "Ablation"), ab ? [h("div", { class: "note" }, `over ${ab.positions} firing positions: next-token loss ${fmt(ab.loss_base, 4)} → ${fmt(ab.loss_ablated, 4)} without it (Δ ${fmt(ab.delta_loss, 3)}); mean change of log-probability`),
          h("div", { class: "grid" }, tokenTable("ablation-promoted", "made more likely", ab.promoted, "Δ log p"), tokenTable("ablation-suppressed", "made less likely", ab.suppressed, "Δ log p"))]
          : h("p", { class: "note" }, "not computed for this unit"))),
      h("section", { id: "steering" }, h("h3", {}, "Pinned sampling"), steeringTable(u.steering), !blind && S.server && S.server.steering ? steerForm(kind, u.unit) : null),
    ];
  }

  function steerForm(kind, unit) {
    const mult = h("input", { type: "number", id: "steer-multiple", value: "5", step: "any", min: "0" });
    const prompt = h("input", { id: "steer-prompt", value: "The", maxlength: 200 });
    const out = h("div");
    return h("div", {}, h("label", {}, "multiple of max ", mult), " ", h("label", {}, "prompt ", prompt), " ",
      h("button", { onclick: async () => {
        out.textContent = "sampling…";
        try { const r = await api("POST", "api/steer", { kind, unit, multiple: Number(mult.value), prompt: prompt.value }); out.replaceChildren(steeringTable(r)); }
        catch (e) { out.replaceChildren(h("span", { class: "error" }, String(e.message || e))); }
      } }, "sample"), out);
  }

  async function renderUnit(kind, unit) {
    await loadIndex(kind);
    const u = await loadUnit(kind, unit);
    if (!u) throw new Error(`${kind} ${unit} does not exist`);
    const form = S.server ? ratingForm(async (r, status) => {
      const saved = await api("POST", "api/rating", { ...r, kind, unit });
      status.className = "status"; status.textContent = `saved (#${saved.id})`;
    }) : h("p", { class: "note" }, "Rating needs the local server: python evaluate.py sae_path=… stage=serve");
    document.getElementById("app").replaceChildren(h("h2", {}, `${unitName(kind)} ${unit}`), ...unitBody(u, kind, false),
      h("section", {}, h("h3", {}, "Rate this unit"), form));
    document.body.setAttribute("data-ready", "unit");
  }

  async function renderBlind() {
    const app = document.getElementById("app");
    if (!S.server) { app.replaceChildren(h("p", {}, "Blind rating needs the local server: python evaluate.py sae_path=… stage=serve")); return; }
    const rater = localStorage.getItem("rater") || "";
    const who = h("input", { id: "blind-rater", value: rater, maxlength: 64 });
    const error = h("span", { class: "status error", id: "blind-error" });
    const show = (next, name) => {
      if (next.done) { app.replaceChildren(h("p", { id: "blind-done" }, `All ${next.total} blind units rated. Thank you.`)); return; }
      const form = ratingForm(async (r, status) => {
        const saved = await api("POST", "api/rating", { ...r, blind_item: next.item });
        form.querySelector("button").disabled = true;
        const onward = async () => {
          try { show(await api("GET", "api/blind/next?rater=" + encodeURIComponent(name)), name); }
          catch (e) { status.className = "status error"; status.textContent = String(e.message || e); }
        };
        status.replaceChildren(h("span", { class: "reveal", id: "reveal" }, `saved (#${saved.id}): this was ${saved.kind === "neurons" ? "neuron" : "feature"} ${saved.unit}`), " ",
          h("button", { type: "button", id: "blind-next", onclick: onward }, "next ›"));
      });
      app.replaceChildren(h("h2", {}, `Blind unit ${next.position + 1} of ${next.total}`), h("p", { class: "note" }, "Features and neurons in random order; which one it is shows after you save."),
        ...unitBody(next.page, null, true), h("section", {}, h("h3", {}, "Rate this unit"), form));
      document.body.setAttribute("data-ready", "blind");
    };
    const start = async () => {
      const name = who.value.trim();
      if (!name) return;
      localStorage.setItem("rater", name);
      // the queue is drawn (or found) by a POST: reading the next unit never writes
      try { show(await api("POST", "api/blind/start", { rater: name }), name); }
      catch (e) { error.textContent = String(e.message || e); }
    };
    app.replaceChildren(h("section", {}, h("h2", {}, "Blind rating"), h("label", {}, "rater ", who), " ", h("button", { id: "blind-start", onclick: start }, "start"), " ", error));
  }

  // ---------------------------------------------------------------- routing
  async function route() {
    document.body.removeAttribute("data-ready");
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
    const kinds = S.summary.kinds;
    try {
      if (parts[0] === "u" && kinds.includes(parts[1])) { S.kind = parts[1]; await renderUnit(parts[1], Number(parts[2])); }
      else if (parts[0] === "blind") await renderBlind();
      else { S.kind = kinds.includes(parts[1]) ? parts[1] : S.kind || kinds[0]; await renderIndex(S.kind); }
    } catch (e) {
      document.getElementById("app").replaceChildren(h("p", { class: "error" }, String(e.message || e)));
    }
    document.querySelectorAll("#kinds a").forEach((a) => a.classList.toggle("active", a.dataset.kind === S.kind));
  }

  async function start() {
    await detectServer();
    document.getElementById("server-status").textContent = S.server ? "local server: rating on" : "static (no rating server)";
    document.getElementById("kinds").replaceChildren(...S.summary.kinds.map((k) => h("a", { href: `#/k/${k}`, "data-kind": k }, k)));
    window.addEventListener("hashchange", route);
    await route();
  }

  return {
    summary(s) { S.summary = s; if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else setTimeout(start, 0); },
    vocab(v) { S.vocab = v; S.orderFor = null; },
    index(kind, ix) { S.index[kind] = ix; arrived("index:" + kind, ix); },
    chunk(kind, p, units) { S.chunks[kind + ":" + p] = units; arrived(`chunk:${kind}:${p}`, units); },
    state: S,
  };
})();
