// The Distro console: reads the admin port's JSON (/cluster, /namespaces, /services,
// /instances) and refreshes it every REFRESH_MS while "live" is checked. Every value coming
// from the registry is set as text (never as HTML): service names and metadata are data that
// clients registered.
//
// On a node with a token file the JSON needs a token: the one typed into the token field is
// kept in sessionStorage (this tab only, gone when it closes) and sent as a bearer token.
"use strict";

const TOKEN_KEY = "distro-token";

const REFRESH_MS = 2000;

const state = {
  namespace: null, // selected namespace
  service: null, // selected {group, service}
  namespaces: [],
  services: [],
  instances: [],
  timer: null,
  inFlight: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "title") e.title = v;
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function getJson(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch(path, { cache: "no-store", headers });
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const msg = body && body.message ? body.message : `${r.status} ${r.statusText}`;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

function serviceKey(s) {
  return s ? `${s.group}/${s.service}` : "";
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.get("ns")) state.namespace = p.get("ns");
  const svc = p.get("svc");
  if (svc && svc.includes("/")) {
    const i = svc.indexOf("/");
    state.service = { group: svc.slice(0, i), service: svc.slice(i + 1) };
  }
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.namespace) p.set("ns", state.namespace);
  if (state.service) p.set("svc", serviceKey(state.service));
  history.replaceState(null, "", "#" + p.toString());
}

function matches(text) {
  const q = $("search").value.trim().toLowerCase();
  return !q || text.toLowerCase().includes(q);
}

function instanceText(i) {
  const meta = Object.entries(i.metadata).map(([k, v]) => `${k}=${v}`).join(" ");
  return `${i.cluster} ${i.ip}:${i.port} ${meta}`;
}

// ---- rendering -------------------------------------------------------------------------

function renderCluster(c) {
  $("node-id").textContent = `node ${c.node}`;
  const ready = $("node-ready");
  ready.textContent = c.ready ? "ready" : "not ready";
  ready.className = "badge " + (c.ready ? "ok" : "bad");
  $("node-instances").textContent = `${c.instances.toLocaleString()} instances`;

  const total = c.members.reduce((n, m) => n + m.owned, 0);
  const up = c.members.filter((m) => m.state === "up").length;
  $("members-summary").textContent = `${up} of ${c.members.length} up`;
  const rows = c.members.map((m) => {
    const share = total > 0 ? (100 * m.owned) / total : 0;
    const self = m.id === c.node;
    return el(
      "tr",
      { "data-testid": "member-row", class: self ? "self" : "" },
      el("td", {}, m.id === 0 ? "?" : m.id, self ? el("span", { class: "tag" }, "this node") : null),
      el("td", { class: "mono" }, m.addr),
      el("td", {}, el("span", { class: "badge " + (m.state === "up" ? "ok" : "bad") }, m.state)),
      el("td", { class: "num" }, m.owned.toLocaleString()),
      el(
        "td",
        { class: "share-col" },
        el("div", { class: "bar" }, el("div", { class: "fill", style: `width:${share.toFixed(1)}%` })),
        el("span", { class: "muted share" }, `${share.toFixed(1)}%`)
      )
    );
  });
  $("members").replaceChildren(...rows);
}

function renderNamespaces() {
  const chips = state.namespaces.map((n) =>
    el(
      "button",
      {
        class: "chip" + (n.namespace === state.namespace ? " selected" : ""),
        "data-testid": "namespace",
        title: `${n.services} services, ${n.instances} instances (${n.healthy} healthy)`,
        onclick: () => selectNamespace(n.namespace),
      },
      n.namespace,
      el("span", { class: "count" }, n.instances.toLocaleString())
    )
  );
  if (chips.length === 0) chips.push(el("span", { class: "muted" }, "no instances registered"));
  $("namespaces").replaceChildren(...chips);
}

function renderServices() {
  const shown = state.services.filter((s) => matches(`${s.group} ${s.service}`) ||
    (state.service && serviceKey(s) === serviceKey(state.service) && state.instances.some((i) => matches(instanceText(i)))));
  $("services-summary").textContent = state.services.length
    ? `${shown.length} of ${state.services.length}`
    : "";
  const items = shown.map((s) => {
    const unhealthy = s.instances - s.healthy;
    return el(
      "li",
      {
        class: serviceKey(s) === serviceKey(state.service) ? "selected" : "",
        "data-testid": "service",
        "data-service": s.service,
        onclick: () => selectService(s),
      },
      el("div", { class: "svc-name" }, s.service, el("span", { class: "group" }, s.group)),
      el(
        "div",
        { class: "svc-counts" },
        el("span", { class: "count" }, `${s.instances}`),
        unhealthy > 0 ? el("span", { class: "badge bad small" }, `${unhealthy} unhealthy`) : null
      )
    );
  });
  $("services").replaceChildren(...items);
}

function renderInstances() {
  const s = state.service;
  $("service-title").textContent = s ? `${s.service}` : "Instances";
  if (s) $("service-title").append(el("span", { class: "muted" }, ` ${state.namespace} / ${s.group}`));
  const shown = state.instances.filter((i) => matches(instanceText(i)) || matches(`${i.group} ${i.service}`));
  const rows = shown.map((i) =>
    el(
      "tr",
      { "data-testid": "instance-row", "data-addr": `${i.ip}:${i.port}` },
      el("td", {}, i.cluster),
      el("td", { class: "mono" }, `${i.ip}:${i.port}`),
      el("td", { class: "num" }, i.weight),
      el("td", {}, el("span", { class: "badge " + (i.healthy ? "ok" : "bad") }, i.healthy ? "healthy" : "unhealthy")),
      el("td", {}, i.enabled ? "yes" : el("span", { class: "badge warn" }, "disabled")),
      el(
        "td",
        {},
        el(
          "div",
          { class: "meta" },
          ...Object.entries(i.metadata).map(([k, v]) => el("span", { class: "kv" }, el("b", {}, k), v))
        )
      )
    )
  );
  $("instances").replaceChildren(...rows);
  const empty = $("instances-empty");
  if (!s) {
    empty.textContent = "Select a service.";
    empty.hidden = false;
  } else if (rows.length === 0) {
    empty.textContent = state.instances.length ? "No instance matches the search." : "This service has no live instances.";
    empty.hidden = false;
  } else {
    empty.hidden = true;
  }
}

function showError(e) {
  const box = $("error");
  if (!e) {
    box.hidden = true;
    return;
  }
  box.textContent =
    e.status === 503
      ? `This node does not serve now: ${e.message}`
      : e.status === 401
        ? `This node requires a token: enter one above (${e.message})`
        : e.status === 403
          ? `Your token does not allow this: ${e.message}`
          : `Cannot reach the node: ${e.message}`;
  box.hidden = false;
}

// ---- loading ---------------------------------------------------------------------------

async function refresh() {
  if (state.inFlight) return;
  state.inFlight = true;
  try {
    const [cluster, namespaces] = await Promise.all([getJson("cluster"), getJson("namespaces")]);
    renderCluster(cluster);
    state.namespaces = namespaces;
    if (!state.namespace || !namespaces.some((n) => n.namespace === state.namespace)) {
      const pub = namespaces.find((n) => n.namespace === "public");
      state.namespace = pub ? pub.namespace : namespaces.length ? namespaces[0].namespace : null;
    }
    renderNamespaces();
    state.services = state.namespace
      ? await getJson(`services?namespace=${encodeURIComponent(state.namespace)}`)
      : [];
    if (!state.service || !state.services.some((s) => serviceKey(s) === serviceKey(state.service))) {
      state.service = state.services.length ? { group: state.services[0].group, service: state.services[0].service } : null;
    }
    if (state.service) {
      const q = new URLSearchParams({
        namespace: state.namespace,
        group: state.service.group,
        service: state.service.service,
      });
      state.instances = await getJson(`instances?${q}`);
    } else {
      state.instances = [];
    }
    renderServices();
    renderInstances();
    writeHash();
    showError(null);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    showError(e);
  } finally {
    state.inFlight = false;
  }
}

function selectNamespace(ns) {
  state.namespace = ns;
  state.service = null;
  refresh();
}

function selectService(s) {
  state.service = { group: s.group, service: s.service };
  refresh();
}

function schedule() {
  clearInterval(state.timer);
  state.timer = $("live").checked ? setInterval(refresh, REFRESH_MS) : null;
}

$("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("change", () => {
  const t = $("token").value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
  refresh();
});
$("search").addEventListener("input", () => {
  renderServices();
  renderInstances();
});
$("live").addEventListener("change", () => {
  schedule();
  if ($("live").checked) refresh();
});
window.addEventListener("hashchange", () => {
  readHash();
  refresh();
});

readHash();
refresh();
schedule();
