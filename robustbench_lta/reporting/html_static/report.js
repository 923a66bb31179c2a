// robustbench-lta HTML report: table sorting and the per-sample explorer. Plain JavaScript, no
// library, no network: the data comes from data.js (window.RB_REPORT), loaded by a <script> tag
// because browsers refuse fetch() on file:// pages.
"use strict";

// Any uncaught error is shown on the page too (#js-errors), so a headless check sees it in the DOM.
window.addEventListener("error", function (ev) {
  var box = document.getElementById("js-errors");
  if (box) { box.hidden = false; box.textContent += "error: " + ev.message + "\n"; }
});

var PAGE = 60;  // explorer cards drawn at a time ("show more" adds as many)

// ------------------------------------------------------------------------------------ the table
function sortValue(td) {
  var v = td.getAttribute("data-v");
  if (v === null || v === "") { return null; }
  var x = Number(v);
  return isNaN(x) ? v.toLowerCase() : x;
}

function sortTable(table, key, descending) {
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var col = heads.findIndex(function (th) { return th.getAttribute("data-key") === key; });
  if (col < 0) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = sortValue(a.cells[col]), y = sortValue(b.cells[col]);
    if (x === null && y === null) { return 0; }
    if (x === null) { return 1; }   // empty cells last in either direction
    if (y === null) { return -1; }
    var c = x < y ? -1 : x > y ? 1 : 0;
    return descending ? -c : c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  heads.forEach(function (th) { th.classList.remove("asc", "desc"); });
  heads[col].classList.add(descending ? "desc" : "asc");
}

function initTable() {
  var table = document.getElementById("results");
  if (!table) { return; }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.addEventListener("click", function () {
      sortTable(table, th.getAttribute("data-key"), th.classList.contains("asc"));
    });
  });
  // "#sort=robust_acc" (ascending) or "#sort=-robust_acc" (descending) in the address
  var key = addressParams().get("sort");
  if (key) { sortTable(table, key.replace(/^-/, ""), key.charAt(0) === "-"); }
}

// ---------------------------------------------------------------------------------- the explorer
var FILTERS = [
  // [name in the address, label, field of a record]
  ["model", "model", "model"],
  ["attack", "attack", "attack"],
  ["eps", "budget", "eps"],
  ["class", "class", "label_name"],
  ["broken", "outcome", "broken"]
];
var state = { shown: PAGE };

function el(tag, attrs, text) {
  var node = document.createElement(tag);
  Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
  if (text !== undefined) { node.textContent = text; }
  return node;
}

function distinct(records, field, order) {
  var seen = {};
  records.forEach(function (r) { seen[String(r[field])] = true; });
  var values = Object.keys(seen);
  if (order) { return order.filter(function (v) { return seen[v]; }); }
  return values.sort();
}

function addressParams() {
  // "#model=a&broken=1" or "?model=a" (either works from file://); "filter=" prefix tolerated
  var text = (window.location.hash || "").replace(/^#/, "").replace(/^filter=/, "");
  if (!text) { text = (window.location.search || "").replace(/^\?/, ""); }
  return new URLSearchParams(text);
}

function readAddress() {
  var params = addressParams();
  var out = {};
  FILTERS.forEach(function (f) { if (params.has(f[0])) { out[f[0]] = params.get(f[0]); } });
  return out;
}

function writeAddress(values) {
  var params = new URLSearchParams();
  var kept = addressParams();
  ["sort", "view"].forEach(function (k) { if (kept.get(k)) { params.set(k, kept.get(k)); } });
  FILTERS.forEach(function (f) { if (values[f[0]]) { params.set(f[0], values[f[0]]); } });
  var text = params.toString();
  history.replaceState(null, "", text ? "#" + text : window.location.pathname);
}

function buildFilters(data) {
  var box = document.getElementById("filters");
  var records = data.records;
  FILTERS.forEach(function (f) {
    var label = el("label", {}, f[1]);
    var select = el("select", { id: "f-" + f[0], "data-filter": f[0] });
    select.appendChild(el("option", { value: "" }, "all"));
    var values;
    if (f[0] === "broken") {
      values = [["1", "broken"], ["0", "not broken"]];
    } else {
      var order = f[0] === "eps" ? data.eps_order : f[0] === "model" ? data.models :
        f[0] === "class" ? data.classes : null;
      values = distinct(records, f[2], order && order.length ? order : null)
        .map(function (v) { return [v, v]; });
    }
    values.forEach(function (v) { select.appendChild(el("option", { value: v[0] }, v[1])); });
    select.addEventListener("change", function () { state.shown = PAGE; apply(data, true); });
    label.appendChild(select);
    box.appendChild(label);
  });
}

function currentFilters() {
  var out = {};
  FILTERS.forEach(function (f) {
    var v = document.getElementById("f-" + f[0]).value;
    if (v) { out[f[0]] = v; }
  });
  return out;
}

function matches(r, filters) {
  return FILTERS.every(function (f) {
    var want = filters[f[0]];
    if (!want) { return true; }
    if (f[0] === "broken") { return (r.broken ? "1" : "0") === want; }
    return String(r[f[2]]) === want;
  });
}

function figure(src, caption, cls) {
  var fig = el("figure");
  if (src) {
    fig.appendChild(el("img", { src: src, alt: caption, class: cls || "", loading: "lazy" }));
  }
  fig.appendChild(el("figcaption", {}, caption));
  return fig;
}

function predText(data, k) {
  var name = data.classes[k];
  return name !== undefined && name !== String(k) ? k + " (" + name + ")" : String(k);
}

function card(data, r) {
  var c = el("div", {
    class: "card " + (r.clean_pred !== r.label ? "misclassified" : r.broken ? "broken" : "robust"), "data-model": r.model, "data-attack": r.attack,
    "data-eps": r.eps, "data-label": r.label_name, "data-broken": r.broken ? "1" : "0", "data-index": r.index
  });
  c.appendChild(el("div", { class: "head" },
    "#" + r.index + " \u00b7 " + r.model + " \u00b7 " + r.shown_as + " @ " + r.eps));
  var line = el("div");
  line.appendChild(document.createTextNode("label " + predText(data, r.label) + "; clean pred "));
  line.appendChild(el("span", { class: r.clean_pred === r.label ? "ok" : "bad" }, predText(data, r.clean_pred)));
  line.appendChild(document.createTextNode("; adversarial pred "));
  line.appendChild(el("span", { class: r.adv_pred === r.label ? "ok" : "bad" }, predText(data, r.adv_pred)));
  line.appendChild(document.createTextNode(r.broken ? " \u2014 broken" : " \u2014 not broken"));
  c.appendChild(line);
  var pics = el("div", { class: "pics" });
  var p = r.pictures;
  if (r.clean_img) { pics.appendChild(figure(r.clean_img, "clean")); }
  if (p) {
    var from = r.from ? " (" + r.from + ")" : "";
    pics.appendChild(figure(p.adv, "adversarial" + from));
    pics.appendChild(figure(p.pert, "perturbation \u00d7" + p.amp + " (max " + p.linf.toFixed(2) + "/255)"));
    p.maps.forEach(function (m, j) {
      pics.appendChild(figure(m.clean, "attention L" + j + " clean", "map"));
      pics.appendChild(figure(m.adv, "attention L" + j + " adv.", "map"));
    });
  }
  c.appendChild(pics);
  if (r.why) { c.appendChild(el("div", { class: "why" }, r.why)); }
  return c;
}

function apply(data, fromUser) {
  var filters = currentFilters();
  if (fromUser) { writeAddress(filters); }
  var hits = data.records.filter(function (r) { return matches(r, filters); });
  var box = document.getElementById("explorer");
  box.textContent = "";
  hits.slice(0, state.shown).forEach(function (r) { box.appendChild(card(data, r)); });
  var count = document.getElementById("explorer-count");
  count.setAttribute("data-matching", String(hits.length));
  count.setAttribute("data-total", String(data.records.length));
  count.textContent = hits.length + " of " + data.records.length + " stored samples match" +
    (hits.length > state.shown ? "; showing the first " + state.shown : "");
  var more = document.getElementById("more");
  more.hidden = hits.length <= state.shown;
}

function setFromAddress(data) {
  var wanted = readAddress();
  FILTERS.forEach(function (f) {
    var select = document.getElementById("f-" + f[0]);
    var v = wanted[f[0]] || "";
    var known = Array.prototype.some.call(select.options, function (o) { return o.value === v; });
    select.value = known ? v : "";
  });
  state.shown = PAGE;
  apply(data, false);
}

function initExplorer() {
  var data = window.RB_REPORT;
  if (!data) { throw new Error("data.js did not load: keep it beside index.html"); }
  buildFilters(data);
  document.getElementById("more").addEventListener("click", function () {
    state.shown += PAGE; apply(data, false);
  });
  window.addEventListener("hashchange", function () { setFromAddress(data); });
  setFromAddress(data);
}

var SECTIONS = { verdict: "verdict", table: "table", curves: "curves", explorer: "explorer-section" };

// "view=explorer" (or verdict, table, curves) shows that section alone: a link to one view, and a
// screenshot of it. Otherwise a link with filters opens at the explorer, one with a sort at the table.
function showAddressed() {
  var params = addressParams();
  var only = SECTIONS[params.get("view") || ""];
  if (only) {
    Object.keys(SECTIONS).forEach(function (k) {
      document.getElementById(SECTIONS[k]).hidden = SECTIONS[k] !== only;
    });
    return;
  }
  var target = Object.keys(readAddress()).length ? "explorer-section" : params.get("sort") ? "table" : null;
  if (target) { document.getElementById(target).scrollIntoView(); }
}

document.addEventListener("DOMContentLoaded", function () {
  initTable();
  initExplorer();
  showAddressed();
  document.body.setAttribute("data-ready", "1");
});
