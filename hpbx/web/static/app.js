"use strict";
// hpbx admin page: one small vanilla-JS app over POST /rpc (the admin method table).
const $ = (s, r = document) => r.querySelector(s);
const $$ = (s, r = document) => Array.from(r.querySelectorAll(s));
const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const COLORS = ["#2d6cb5", "#16803c", "#b8423a", "#8e44ad", "#d4860b", "#138d90", "#6b4f2a", "#c2185b", "#455a64", "#7cb342"];
const FLAG_TABS = {
  Settings: ["cti_access", "may_manage_announcements", "may_manage_public_addressbook", "busy_on_active_call",
    "busy_while_ringing", "show_internal_number_internally", "extended_call_info", "behind_nat", "may_record",
    "parallel_softphone_sessions", "missed_call_mail", "push_incoming", "push_missed", "not_in_allusers", "hide_user"],
  Mailbox: ["missed_call_mail"],
  CTI: ["cti_access", "no_tls", "parallel_softphone_sessions", "push_incoming", "push_missed"],
  Callthrough: [], Pickup: [], Rules: ["busy_on_active_call", "busy_while_ringing"], Supervisor: [],
};
const FLAG_TEXT = {
  cti_access: "CTI access", may_manage_announcements: "May manage announcements",
  may_manage_public_addressbook: "May manage public address book", busy_on_active_call: "Signal busy on active call",
  busy_while_ringing: "Signal busy while ringing", show_internal_number_internally: "Show internal number on calls inside the PBX",
  extended_call_info: "Send extended call information to the phones", behind_nat: "Phone is behind NAT",
  may_record: "May record calls", parallel_softphone_sessions: "Allow parallel sessions in softphone mode",
  missed_call_mail: "Mail notification for missed calls", push_incoming: "PUSH notification for incoming calls",
  push_missed: "PUSH notification for missed calls", not_in_allusers: "Not a member of dial group ALLUSERS",
  hide_user: "Hide user from other participants", no_tls: "Do not offer TLS (wwphone/wwmobile)",
};
let csrf = "", me = null, timers = [], current = "";

// ---------------------------------------------------------------- helpers
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed under the page's CSP
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}
class RpcError extends Error {
  constructor(e) { super(e.message); this.code = e.code; this.data = e.data || {}; }
}
async function rpc(method, params) {
  const r = await fetch("/rpc", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ jsonrpc: "2.0", method, params: params || {}, id: 1 }),
  });
  if (r.status === 401) { showLogin(); throw new RpcError({ code: -32004, message: "not logged in" }); }
  const a = await r.json();
  if (a.error) throw new RpcError(a.error);
  return a.result;
}
function tenantParam() { const t = $("#tenant-select").value; return t ? { tenant: t } : {}; }
function tenant() { return $("#tenant-select").value || (me && me.tenant) || ""; }
function every(ms, fn) { timers.push(setInterval(fn, ms)); }
function clearErrors(box) {
  $$(".bad", box).forEach(e => e.classList.remove("bad"));
  $$(".field-error", box).forEach(e => { e.textContent = ""; });
}
// A JSON-RPC error names its field (data.field, e.g. "details.email", "slots[2].rows[0].targets[1]"):
// it is shown next to the input of that field, or of the nearest enclosing one.
function showError(box, err) {
  clearErrors(box);
  let field = err.data && err.data.field, el = null;
  while (field && !(el = box.querySelector(`[data-field="${CSS.escape(field)}"]`))) {
    const cut = Math.max(field.lastIndexOf("."), field.lastIndexOf("["));
    field = cut > 0 ? field.slice(0, cut) : "";
  }
  const msg = err.data && err.data.reason ? `${err.data.field}: ${err.data.reason}` : err.message;
  if (el) {
    el.classList.add("bad");
    let slot = box.querySelector(`.field-error[data-for="${CSS.escape(field)}"]`);
    if (!slot) { slot = h("div", { class: "field-error", "data-for": field }); el.after(slot); }
    slot.textContent = msg;
    el.focus && el.focus();
  } else {
    const slot = box.querySelector(".form-error") || box.appendChild(h("div", { class: "field-error form-error" }));
    slot.textContent = msg;
  }
}
function input(field, value, attrs) {
  return h("input", { "data-field": field, name: field, value: value ?? "", ...(attrs || {}) });
}
function labelled(text, el) { return [h("label", { text }), el]; }
function table(cols, rows, onclick, key) {
  return h("table", {}, h("thead", {}, h("tr", {}, cols.map(c => h("th", { text: c[0] })))),
    h("tbody", {}, rows.map(r => {
      const tr = h("tr", { "data-key": key ? key(r) : null, onclick: onclick ? () => onclick(r, tr) : null },
        cols.map(c => { const v = c[1](r); return h("td", { class: c[2] || null }, v instanceof Node ? v : String(v ?? "")); }));
      return tr;
    })));
}
function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

// ---------------------------------------------------------------- login
function showLogin() {
  timers.forEach(clearInterval); timers = [];
  $("#app").hidden = true; $("#login").hidden = false; $("#login-user").focus();
}
async function login(ev) {
  ev.preventDefault();
  const r = await fetch("/api/login", {
    method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
    body: JSON.stringify({ username: $("#login-user").value, password: $("#login-pass").value }),
  });
  const a = await r.json();
  if (!r.ok) { $("#login-error").textContent = a.error; return; }
  $("#login-pass").value = ""; $("#login-error").textContent = "";
  started(a);
}
async function started(session) {
  csrf = session.csrf; me = session.account;
  $("#login").hidden = true; $("#app").hidden = false;
  $("#whoami").textContent = `${me.username} (${me.role === "operator" ? "operator" : "admin of " + me.tenant})`;
  const sel = $("#tenant-select");
  sel.replaceChildren();
  const tenants = await rpc("tenant.list");
  if (me.role === "operator") sel.append(h("option", { value: "", text: "all tenants" }));
  tenants.forEach(t => sel.append(h("option", { value: t.name, text: t.name })));
  if (me.role !== "operator") { sel.value = me.tenant; sel.disabled = true; }
  else if (tenants.length) sel.value = tenants[0].name;
  systemLine();
  route();
  $("#ready").textContent = "ready";
}
async function systemLine() {
  try {
    const s = await rpc("system.info");
    const l = s.licences || {};
    const lic = s.licence && s.licence.line ? s.licence.line : `Lic: ${l.users ?? "?"}/${l.cti_users ?? "?"}`;
    $("#sysline").textContent = `${lic}   WAN IP: ${(s.wan && s.wan.address) || "-"}   System: hpbx ${s.version}   Gui: ${document.lastModified}`;
  } catch (e) { $("#sysline").textContent = ""; }
}

// ---------------------------------------------------------------- router
const VIEWS = {};
function route() {
  timers.forEach(clearInterval); timers = [];
  const name = (location.hash || "#dashboard").slice(1).split("/")[0];
  current = VIEWS[name] ? name : "dashboard";
  $$("#menu a").forEach(a => a.classList.toggle("active", a.dataset.view === current));
  const main = $("#view");
  main.replaceChildren(h("p", { class: "muted", text: "loading…" }));
  VIEWS[current](main).catch(e => main.replaceChildren(h("p", { class: "field-error", text: e.message })));
}

// ---------------------------------------------------------------- dashboard
function barChart(perHour, w = 520, hgt = 120) {
  const max = Math.max(1, ...perHour.map(p => p.calls));
  const bw = w / perHour.length;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt + 16}`); svg.setAttribute("width", w); svg.setAttribute("class", "chart");
  perHour.forEach((p, i) => {
    for (const [val, color] of [[p.calls, "#b8c9de"], [p.answered, "#2d6cb5"]]) {
      const r = document.createElementNS(svg.namespaceURI, "rect");
      const bh = (val / max) * hgt;
      r.setAttribute("x", i * bw + 1); r.setAttribute("width", bw - 2);
      r.setAttribute("y", hgt - bh); r.setAttribute("height", bh); r.setAttribute("fill", color);
      const t = document.createElementNS(svg.namespaceURI, "title");
      t.textContent = `${new Date(p.hour).getHours()}:00 ${p.calls} calls, ${p.answered} answered`;
      r.append(t); svg.append(r);
    }
    if (i % 3 === 0) {
      const t = document.createElementNS(svg.namespaceURI, "text");
      t.setAttribute("x", i * bw); t.setAttribute("y", hgt + 12); t.setAttribute("font-size", "10");
      t.textContent = new Date(p.hour).getHours() + "h"; svg.append(t);
    }
  });
  return svg;
}
function gauge(rate) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 80 80"); svg.setAttribute("width", 80);
  const c = (r, color, frac) => {
    const e = document.createElementNS(svg.namespaceURI, "circle");
    e.setAttribute("cx", 40); e.setAttribute("cy", 40); e.setAttribute("r", r); e.setAttribute("fill", "none");
    e.setAttribute("stroke", color); e.setAttribute("stroke-width", 10);
    const len = 2 * Math.PI * r; e.setAttribute("stroke-dasharray", `${len * frac} ${len}`);
    e.setAttribute("transform", "rotate(-90 40 40)"); svg.append(e);
  };
  c(30, "#e3e7ec", 1); c(30, "#16803c", rate ?? 0);
  const t = document.createElementNS(svg.namespaceURI, "text");
  t.setAttribute("x", 40); t.setAttribute("y", 45); t.setAttribute("text-anchor", "middle"); t.setAttribute("font-size", 14);
  t.textContent = rate === null || rate === undefined ? "–" : Math.round(rate * 100) + "%"; svg.append(t);
  return svg;
}
VIEWS.dashboard = async main => {
  const draw = async () => {
    const d = await rpc("dashboard.get", tenantParam());
    main.replaceChildren(h("h2", { text: "Dashboard" }), ...d.tenants.map(t => h("div", { class: "card", "data-tenant": t.tenant },
      h("h3", { text: `Tenant ${t.tenant}` }),
      h("div", { class: "kpis" },
        h("div", { class: "kpi" }, h("b", { class: "kpi-active", text: t.active_calls }), "active calls"),
        h("div", { class: "kpi" }, h("b", { class: "kpi-regs", text: t.registrations }), "registered devices"),
        h("div", { class: "kpi" }, h("b", { text: `${t.users_online}/${t.users}` }), "users online"),
        h("div", { class: "kpi" }, h("b", { text: t.calls }), `calls in ${d.hours} h`),
        h("div", { class: "kpi" }, gauge(t.answer_rate), h("div", { text: "answer rate" }))),
      h("h4", { text: "Calls per hour (light: all, dark: answered)" }), barChart(t.per_hour))));
  };
  await draw();
  every(5000, () => draw().catch(() => {}));
};

// ---------------------------------------------------------------- users
VIEWS.users = async main => {
  const list = h("div"), panel = h("div");
  main.replaceChildren(h("h2", { text: "Users/Phones" }),
    h("div", { class: "row" }, h("button", { id: "new-user", onclick: () => userPanel(panel, null, reload) , text: "New user" })),
    h("div", { class: "split" }, list, panel));
  let users = [], selected = null;
  async function reload(select) {
    users = await rpc("user.list", tenantParam());
    list.replaceChildren(table([["Username", u => u.username], ["Displayed no.", u => u.displayed_number],
      ["Internal", u => u.internal_number], ["IP", () => "", "ip"], ["Phone", () => "offline", "status offline"],
      ["CTI", () => "offline", "cti offline"]],
      users, (u, tr) => { selected = u.username; $$("tr", list).forEach(x => x.classList.toggle("sel", x === tr)); userPanel(panel, u, reload); },
      u => u.username));
    $("table", list).id = "user-table";
    $$("tbody tr", list).forEach(tr => tr.dataset.user = tr.dataset.key);
    if (select) { selected = select; const u = users.find(x => x.username === select); if (u) userPanel(panel, u, reload); }
    if (selected) $$("tbody tr", list).forEach(x => x.classList.toggle("sel", x.dataset.user === selected));
    await status();
  }
  async function status() {
    const regs = await rpc("registration.list", tenantParam());
    const sessions = await rpc("cti.session.list", tenantParam()).catch(() => []);  // no web face: none
    const cti = {};
    sessions.forEach(s => { cti[s.user] = (cti[s.user] || 0) + 1; });
    $$("#user-table tbody tr").forEach(tr => {
      const n = cti[tr.dataset.user] || 0, td = $("td.cti", tr);
      td.textContent = n ? (n > 1 ? `online (${n})` : "online") : "offline";
      td.className = "cti " + (n ? "online" : "offline");
    });
    const cs = $("#cti-status", panel);
    if (cs) {
      const n = cti[cs.dataset.user] || 0;
      cs.textContent = n ? `online (${n} session${n > 1 ? "s" : ""})` : "offline";
      cs.className = n ? "online" : "offline";
    }
    const by = {};
    regs.forEach(r => (by[r.user] = by[r.user] || []).push(r));
    $$("#user-table tbody tr").forEach(tr => {
      const r = (by[tr.dataset.user] || []).filter(x => x.online !== false);
      const st = $("td.status", tr), ip = $("td.ip", tr);
      st.textContent = r.length ? "online" : "offline";
      st.className = "status " + (r.length ? "online" : "offline");
      ip.textContent = r.map(x => x.source).join(", ");
    });
    const ps = $("#phone-status", panel);
    if (ps) {
      const r = by[ps.dataset.user] || [];
      ps.textContent = r.length ? `online (${r.length} device${r.length > 1 ? "s" : ""}: ${r.map(x => x.user_agent || x.source).join(", ")})` : "offline";
      ps.className = r.length ? "online" : "offline";
    }
  }
  await reload();
  every(2000, () => status().catch(() => {}));
};
async function userPanel(panel, u, reload) {
  const isNew = !u;
  u = u || { username: "", sip_password: "", cti_password: "", internal_number: "", displayed_number: "",
    displayed_number_diversion: "displayed", details: {}, flags: {} };
  const numbers = await rpc("number.list", { tenant: u.tenant || tenant() }).catch(() => []);
  const numSel = field => h("select", { "data-field": field, name: field },
    h("option", { value: "", text: "–" }), numbers.map(n => h("option", { value: n.number, text: `${n.number} ${n.name}`, selected: u[field] === n.number })));
  const det = k => input(`details.${k}`, u.details[k]);
  const flagBox = k => h("label", {}, h("input", { type: "checkbox", "data-field": `flags.${k}`, name: `flags.${k}`, "data-flag": k, checked: !!u.flags[k] }), " " + (FLAG_TEXT[k] || k));
  const form = h("form", { id: "user-form", class: "card", onsubmit: e => { e.preventDefault(); save(); } },
    h("h3", { text: isNew ? "New user" : `User ${u.username}` }),
    h("h4", { text: "Credentials" }),
    h("div", { class: "grid2" }, labelled("Username", input("username", u.username, { readonly: !isNew })),
      labelled("SIP password", input("sip_password", u.sip_password)), labelled("CTI password", input("cti_password", u.cti_password))),
    h("h4", { text: "Details (display and phonebook)" }),
    h("div", { class: "grid2" }, labelled("First name", det("first_name")), labelled("Name", det("name")),
      labelled("Company", det("company")), labelled("Mobile", det("mobile")), labelled("Nickname", det("nickname")),
      labelled("E-mail", det("email"))),
    h("h4", { text: "Status" }),
    h("div", { class: "grid2" }, h("label", { text: "CTI" }), h("span", { id: "cti-status", "data-user": u.username, class: "offline", text: isNew ? "–" : "offline" }),
      h("label", { text: "Phone" }), h("span", { id: "phone-status", "data-user": u.username, class: "offline", text: isNew ? "–" : "offline" })));
  const tabs = h("div", { class: "tabs" }), pane = h("div", { class: "tabpane" });
  const panes = {};
  for (const name of Object.keys(FLAG_TABS)) {
    const p = h("div", { "data-tab": name, hidden: true });
    if (name === "Settings") p.append(h("div", { class: "grid2" },
      labelled("Internal number", input("internal_number", u.internal_number)),
      labelled("Displayed number", numSel("displayed_number")),
      labelled("Displayed number on diversion", h("select", { "data-field": "displayed_number_diversion", name: "displayed_number_diversion" },
        ["displayed", "original_caller", "dialled"].map(v => h("option", { value: v, text: v, selected: u.displayed_number_diversion === v }))))));
    if (name === "Mailbox") p.append(h("p", { class: "muted", text: "Messages go to the e-mail address in the details." }));
    if (name === "Callthrough") p.append(h("p", { class: "muted", text: `Authorised number: the mobile in the details (${u.details.mobile || "none"}).` }));
    if (name === "Pickup") p.append(h("p", { class: "muted", text: "Groups this user is in (pickup permission follows group membership):" }), h("ul", { class: "pickup-groups" }));
    if (name === "Supervisor") p.append(h("p", { class: "muted", text: "Phones with a BLF key on this user:" }), h("ul", { class: "blf-phones" }));
    p.append(h("div", { class: "flags" }, FLAG_TABS[name].filter(k => name !== "Settings" || true).map(flagBox)));
    panes[name] = p; pane.append(p);
    tabs.append(h("button", { type: "button", "data-tabname": name, text: name, onclick: () => show(name) }));
  }
  function show(name) {
    Object.entries(panes).forEach(([n, p]) => { p.hidden = n !== name; });
    $$("button", tabs).forEach(b => b.classList.toggle("active", b.dataset.tabname === name));
  }
  // one flag shown in several tabs stays one value
  form.addEventListener("change", e => {
    if (e.target.dataset.flag) $$(`[data-flag="${e.target.dataset.flag}"]`, form).forEach(x => { x.checked = e.target.checked; });
  });
  form.append(tabs, pane, h("div", { class: "row" },
    h("button", { id: "user-save", type: "submit", text: "Save" }),
    isNew ? null : h("button", { id: "user-delete", type: "button", class: "danger", text: "Delete", onclick: del })),
    h("div", { class: "field-error form-error" }), h("div", { class: "muted saved", id: "user-saved" }));
  show("Settings");
  panel.replaceChildren(form);
  if (!isNew) {
    rpc("group.list", { tenant: u.tenant }).then(gs => $(".pickup-groups", form).replaceChildren(
      ...gs.filter(g => g.members.includes(u.username)).map(g => h("li", { text: g.name })))).catch(() => {});
    rpc("phone.list", { tenant: u.tenant }).then(ps => $(".blf-phones", form).replaceChildren(
      ...ps.filter(p => p.keys.some(k => k.type === "blf" && k.value === u.username)).map(p => h("li", { text: `${p.mac} (${p.vendor} ${p.model})` })))).catch(() => {});
  }
  function values() {
    const v = { details: {}, flags: {} };
    for (const el of $$("[data-field]", form)) {
      const f = el.dataset.field;
      if (f.startsWith("details.")) v.details[f.slice(8)] = el.value;
      else if (f.startsWith("flags.")) v.flags[f.slice(6)] = el.checked;
      else v[f] = el.value;
    }
    return v;
  }
  async function save() {
    const v = values();
    try {
      if (isNew) {
        for (const k of ["cti_password", "internal_number", "displayed_number"]) if (!v[k]) delete v[k];
        const t = tenant();
        await rpc("user.create", { ...v, tenant: t });
      } else {
        const { username, ...changes } = v;
        await rpc("user.update", { username: u.username, ...changes });
      }
      clearErrors(form);
      await reload(v.username);
      const s = $("#user-saved"); if (s) s.textContent = "saved";
    } catch (e) { showError(form, e); }
  }
  async function del() {
    if (!confirm(`Delete user ${u.username}?`)) return;
    try { await rpc("user.delete", { username: u.username }); panel.replaceChildren(); await reload(); }
    catch (e) { showError(form, e); }
  }
}

// ---------------------------------------------------------------- numbers and the weekly timeline
function rowsToText(rows) { return (rows || []).map(r => `${r.duration}: ${r.targets.join(", ")}`).join("\n"); }
function textToRows(text) {
  return text.split("\n").map(l => l.trim()).filter(Boolean).map(l => {
    const m = l.match(/^(\d+)\s*:\s*(.*)$/);
    const targets = (m ? m[2] : l).split(",").map(s => s.trim()).filter(Boolean);
    return { mode: 1, duration: m ? parseInt(m[1], 10) : 20, targets };
  });
}
const toMin = t => { const [a, b] = (t || "00:00").split(":").map(Number); return a * 60 + b; };
const toHHMM = m => `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
VIEWS.numbers = async main => {
  const list = h("div"), panel = h("div");
  main.replaceChildren(h("h2", { text: "Numbers" }), h("div", { class: "split" }, list, panel));
  const numbers = await rpc("number.list", tenantParam());
  list.append(table([["Number", n => n.number], ["Name", n => n.name], ["Usage", n => n.usage]], numbers,
    (n, tr) => { $$("tr", list).forEach(x => x.classList.toggle("sel", x === tr)); numberPanel(panel, n.number); }, n => n.number));
  $("table", list).id = "number-table";
  const want = location.hash.split("/")[1];
  if (want) numberPanel(panel, decodeURIComponent(want));
};
async function numberPanel(panel, number) {
  const n = await rpc("number.get", { number });
  const slots = n.slots.map(s => ({ ...s, rows: s.rows.map(r => ({ ...r })) }));
  while (slots.length < 10) slots.push({ active: false, name: "", mode: "weekday", days: [], date_from: "", date_to: "", time_start: "00:00", time_end: "23:59", announcement_before: 0, announcement_after: 0, voice2mail: "", rows: [] });
  let cur = 0;
  const form = h("form", { id: "slots-form", class: "card", onsubmit: e => { e.preventDefault(); save(); } });
  const timeline = h("div", { id: "timeline" });
  const slotButtons = h("div", { class: "tabs", id: "slot-buttons" });
  const fields = h("div");
  const sim = h("div", { class: "card", id: "simulator" });
  panel.replaceChildren(h("h3", { text: `${n.number} ${n.name}` }), form, sim);
  form.append(h("p", { class: "muted", text: "Ten dial-plan slots; drag across a day of the timeline to set the selected slot's window on that day. Left-most active slot wins." }),
    slotButtons, timeline, fields, h("div", { class: "row" }, h("button", { id: "slots-save", type: "submit", text: "Save slots" }),
      h("span", { id: "slots-saved", class: "muted" })), h("div", { class: "field-error form-error" }));
  function drawButtons() {
    slotButtons.replaceChildren(...slots.map((s, i) => h("button", { type: "button", "data-slot": i + 1, class: i === cur ? "active" : null,
      style: `border-bottom:4px solid ${COLORS[i]}`, text: `${i + 1}${s.name ? " " + s.name : ""}${s.active ? "" : " (off)"}`, onclick: () => { cur = i; drawAll(); } })));
  }
  function drawTimeline() {
    timeline.replaceChildren(h("div", { class: "tl-hours" }, h("span"), ...Array.from({ length: 24 }, (_, i) => h("span", { text: i }))));
    DAYS.forEach((d, di) => {
      const day = h("div", { class: "tl-day", "data-day": d });
      slots.forEach((s, i) => {
        if (!s.active && i !== cur) return;
        if (s.mode !== "weekday") return;
        const a = toMin(s.time_start), b = toMin(s.time_end);
        const parts = [];
        const prev = DAYS[(di + 6) % 7];
        if (a <= b) { if (s.days.includes(d)) parts.push([a, b]); }
        else { if (s.days.includes(d)) parts.push([a, 1439]); if (s.days.includes(prev)) parts.push([0, b]); }
        parts.forEach(([x, y]) => day.append(h("div", { class: "tl-bar" + (i === cur ? " cur" : ""), "data-slot": i + 1,
          style: `left:${x / 14.4}%;width:${Math.max(0.3, (y - x + 1) / 14.4)}%;background:${COLORS[i]};opacity:${s.active ? 0.85 : 0.35}`,
          text: `${i + 1}` })));
      });
      let start = null;
      const minuteAt = ev => { const r = day.getBoundingClientRect(); return Math.max(0, Math.min(1439, Math.round(((ev.clientX - r.left) / r.width) * 1440 / 15) * 15)); };
      day.addEventListener("mousedown", ev => { start = minuteAt(ev); ev.preventDefault(); });
      day.addEventListener("mouseup", ev => {
        if (start === null) return;
        let end = minuteAt(ev); let a = Math.min(start, end), b = Math.max(start, end); start = null;
        if (b === a) return;
        if (b >= 1439) b = 1439; else b -= 1;
        const s = slots[cur];
        s.mode = "weekday"; s.active = true; s.time_start = toHHMM(a); s.time_end = toHHMM(b);
        if (!s.days.includes(d)) s.days = DAYS.filter(x => x === d || s.days.includes(x));
        drawAll();
      });
      timeline.append(h("div", { class: "tl-row" }, h("span", { text: d }), day));
    });
  }
  function drawFields() {
    const s = slots[cur], p = `slots[${cur}]`;
    const bind = (key, el, conv) => { el.addEventListener("change", () => { s[key] = conv ? conv(el) : el.value; drawTimeline(); drawButtons(); }); return el; };
    fields.replaceChildren(h("div", { class: "grid2" },
      labelled("Active", bind("active", h("input", { type: "checkbox", "data-field": `${p}.active`, id: "slot-active", checked: s.active }), el => el.checked)),
      labelled("Name", bind("name", input(`${p}.name`, s.name, { id: "slot-name" }))),
      labelled("Kind", bind("mode", h("select", { "data-field": `${p}.mode` }, ["weekday", "date"].map(m => h("option", { value: m, text: m, selected: s.mode === m }))))),
      labelled("Days", h("span", { "data-field": `${p}.days` }, DAYS.map(d => h("label", {}, bind("days", h("input", { type: "checkbox", "data-day": d, checked: s.days.includes(d) }),
        () => DAYS.filter(x => $(`[data-day="${x}"]`, fields).checked)), d + " ")))),
      labelled("From", bind("time_start", input(`${p}.time_start`, s.time_start, { id: "slot-start", size: 5 }))),
      labelled("To", bind("time_end", input(`${p}.time_end`, s.time_end, { id: "slot-end", size: 5 }))),
      labelled("Date from", bind("date_from", input(`${p}.date_from`, s.date_from, { type: "date" }))),
      labelled("Date to", bind("date_to", input(`${p}.date_to`, s.date_to, { type: "date" }))),
      labelled("Announcement before", bind("announcement_before", input(`${p}.announcement_before`, s.announcement_before, { type: "number", min: 0 }), el => parseInt(el.value || "0", 10))),
      labelled("Announcement after", bind("announcement_after", input(`${p}.announcement_after`, s.announcement_after, { type: "number", min: 0 }), el => parseInt(el.value || "0", 10))),
      labelled("Voice2Mail", bind("voice2mail", input(`${p}.voice2mail`, s.voice2mail))),
      labelled("Rows (seconds: targets)", bind("rows", h("textarea", { "data-field": `${p}.rows`, id: "slot-rows", rows: 4, placeholder: "20: user:alice, group:sales\n30: external:0791234567" }, rowsToText(s.rows)), el => textToRows(el.value)))));
  }
  function drawAll() { drawButtons(); drawTimeline(); drawFields(); }
  async function save() {
    try {
      await rpc("number.set_slots", { number: n.number, slots });
      clearErrors(form);
      $("#slots-saved").textContent = "saved " + new Date().toLocaleTimeString();
    } catch (e) {
      const m = e.data && e.data.field && e.data.field.match(/^slots\[(\d+)\]/);
      if (m && +m[1] !== cur) { cur = +m[1]; drawAll(); }
      showError(form, e);
    }
  }
  drawAll();
  // the dial-plan simulator
  const at = h("input", { type: "datetime-local", id: "sim-at" });
  const out = h("div", { id: "sim-result" });
  sim.append(h("h4", { text: "What happens if someone calls this number…" }),
    h("div", { class: "row" }, h("label", {}, "at ", at), h("button", { type: "button", id: "sim-run", text: "Simulate", onclick: run }), h("span", { class: "muted", text: "(empty: now)" })), out);
  async function run() {
    try {
      const params = { number: n.number };
      if (at.value) params.at = new Date(at.value).toISOString();
      const r = await rpc("number.simulate", params);
      out.replaceChildren(...[h("p", {}, r.status ? `No dial plan: SIP ${r.status} (${r.reason})` :
        `Slot ${r.slot || "-"} ${r.slot_name ? "“" + r.slot_name + "”" : ""} chosen by ${r.switch ? "switch " + r.switch : r.source} at ${r.local_time.slice(0, 16).replace("T", " ")} (${r.timezone})`),
        r.announcement_before ? h("p", { text: `Announcement ${r.announcement_before} first` }) : null,
        ...r.rows.map(row => h("div", { class: "sim-row" }, h("b", { text: `Row ${row.row}: from ${row.starts_after} s for ${row.duration} s` }),
          h("ul", {}, row.targets.map(t => h("li", { class: t.registered ? "online" : "offline", text: `${t.target}${t.name ? " (" + t.name + ")" : ""}${t.via !== t.target ? " via " + t.via : ""}: ${t.registered ? "registered" : "not registered"}` }))))),
        r.voice2mail ? h("p", { text: `Then Voice2Mail to ${r.voice2mail}` }) : null].filter(Boolean));
    } catch (e) { out.replaceChildren(h("p", { class: "field-error", text: e.message })); }
  }
}

// ---------------------------------------------------------------- special switches, groups, announcements
VIEWS.switches = async main => {
  const draw = async () => {
    const sw = await rpc("switch.list", tenantParam());
    main.replaceChildren(h("h2", { text: "Special switches" }), table([
      ["Switch", s => s.name], ["Tenant", s => s.tenant], ["Numbers", s => s.numbers.join(", ")],
      ["Uses", s => s.use_slot ? `slot ${s.use_slot}` : "own plan"], ["Since", s => s.on ? fmtTime(s.switched_on_at) : ""],
      ["", s => h("button", { type: "button", class: `toggle ${s.on ? "on" : "off"}`, "data-switch": s.name, text: s.on ? "on" : "off",
        onclick: async ev => { ev.stopPropagation(); try { await rpc(s.on ? "switch.clear" : "switch.set", { tenant: s.tenant, name: s.name }); await draw(); } catch (e) { alert(e.message); } } })]],
      sw), h("div", { class: "field-error form-error" }));
  };
  await draw();
};
VIEWS.groups = async main => {
  const gs = await rpc("group.list", tenantParam());
  const panel = h("div");
  const t = table([["Group", g => g.name], ["Internal", g => g.internal_number],
    ["Members", g => g.members.map(m => g.logged_out.includes(m) ? `${m} (out)` : m).join(", ")]], gs, g => groupPanel(panel, g), g => g.name);
  t.id = "group-table";
  main.replaceChildren(h("h2", { text: "Groups" }),
    h("div", { class: "row" }, h("button", { id: "new-group", type: "button", text: "New group", onclick: () => groupPanel(panel, null) })),
    h("div", { class: "split" }, h("div", {}, t), panel));
};
function groupPanel(panel, g) {
  const isNew = !g;
  g = g || { tenant: tenant(), name: "", internal_number: "", members: [] };
  const form = h("form", { class: "card", id: "group-form", onsubmit: async e => {
    e.preventDefault();
    const p = { tenant: g.tenant, name: isNew ? $("[data-field=name]", form).value : g.name,
      internal_number: $("[data-field=internal_number]", form).value,
      members: $("[data-field=members]", form).value.split(",").map(s => s.trim()).filter(Boolean) };
    try {
      await rpc(isNew ? "group.create" : "group.update", p);
      route();
    } catch (err) { showError(form, err); }
  } }, h("h3", { text: isNew ? "New group" : `Group ${g.name}` }), h("div", { class: "grid2" },
    isNew ? labelled("Name", input("name", "")) : null,
    labelled("Internal number", input("internal_number", g.internal_number)),
    labelled("Members (in ring order)", input("members", g.members.join(", ")))), h("button", { type: "submit", id: "group-save", text: "Save" }),
    h("div", { class: "field-error form-error" }));
  panel.replaceChildren(form);
}
VIEWS.announcements = async main => {
  const as = await rpc("announcement.list", tenantParam());
  const audio = a => a.file ? h("audio", { controls: true, preload: "metadata", "data-ann": a.id,
    src: `/api/announcements/${encodeURIComponent(a.tenant)}/${a.id}.wav` }) : h("span", { class: "muted", text: "no audio" });
  const del = a => h("button", { type: "button", class: "danger", "data-del": a.id, text: "Delete", onclick: async () => {
    if (!confirm(`Delete announcement ${a.id}?`)) return;
    try { await rpc("announcement.delete", { tenant: a.tenant, id: a.id }); route(); } catch (e) { showError(form, e); }
  } });
  const file = h("input", { type: "file", "data-field": "audio", name: "audio", id: "ann-file", accept: "audio/wav,audio/x-wav,audio/mpeg,.wav,.mp3" });
  const form = h("form", { class: "card", id: "ann-form", onsubmit: async e => {
    e.preventDefault();
    const fd = new FormData();
    for (const k of ["id", "name", "kind"]) { const v = $(`[data-field="${k}"]`, form).value; if (v) fd.append(k, v); }
    if (tenant()) fd.append("tenant", tenant());
    if (file.files[0]) fd.append("audio", file.files[0]);
    $("#ann-saved").textContent = "uploading…";
    const r = await fetch("/api/announcements", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf }, body: fd });
    if (r.status === 401) { showLogin(); return; }
    const a = await r.json();
    if (a.error) { $("#ann-saved").textContent = ""; showError(form, new RpcError(a.error)); return; }
    route();
  } }, h("h3", { text: "Upload (WAV or MP3; announcements up to 3 min, music up to 10 min)" }),
    h("div", { class: "grid2" }, labelled("Audio file", file),
      labelled("ID (empty: the next free one; an existing ID gets the new audio)", input("id", "", { type: "number", min: 1, id: "ann-id" })),
      labelled("Name", input("name", "", { id: "ann-name" })),
      labelled("Kind", h("select", { "data-field": "kind", name: "kind", id: "ann-kind" }, ["announcement", "music"].map(k => h("option", { value: k, text: k }))))),
    h("div", { class: "row" }, h("button", { type: "submit", id: "ann-upload", text: "Upload" }), h("span", { id: "ann-saved", class: "muted" })),
    h("div", { class: "field-error form-error" }));
  const t = table([["ID", a => a.id], ["Name", a => a.name], ["Kind", a => a.kind],
    ["Length", a => a.duration_ms ? (a.duration_ms / 1000).toFixed(1) + " s" : ""], ["Listen", audio, "listen"], ["", del]], as, null, a => String(a.id));
  t.id = "ann-table";
  main.replaceChildren(h("h2", { text: "Announcements / music on hold" }), t,
    h("p", { class: "muted", text: "Dial *201 + ID + # to listen to an announcement by phone." }), form);
};

// ---------------------------------------------------------------- address book (FEATURES 16)
function b64(bytes) { let s = ""; for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000)); return btoa(s); }
VIEWS.addressbook = async main => {
  const book = await rpc("addressbook.list", { tenant: tenant(), limit: 1000 });
  const file = h("input", { type: "file", id: "ab-file", "data-field": "csv", accept: ".csv,text/csv,text/plain" });
  const result = h("span", { id: "ab-result", class: "muted" });
  const form = h("form", { class: "card", id: "ab-form", onsubmit: async e => {
    e.preventDefault();
    clearErrors(form);
    if (!file.files[0]) { showError(form, new RpcError({ message: "csv: choose a file", data: { field: "csv", reason: "choose a file" } })); return; }
    const bytes = new Uint8Array(await file.files[0].arrayBuffer());
    result.textContent = "importing…";
    try {
      const r = await rpc("addressbook.import", { tenant: tenant(), csv_base64: b64(bytes) });
      route();
      setTimeout(() => { const x = $("#ab-result"); if (x) x.textContent = `imported ${r.imported} (replaced ${r.replaced}, ${r.encoding})`; }, 0);
    } catch (err) { result.textContent = ""; showError(form, err); }
  } }, h("h3", { text: "Import (replaces the global address book)" }),
    h("p", { class: "muted", text: "CSV, UTF-8 or ISO-8859-1, separated by ';': First name;Last name;Company;Number private;Number office;Number mobile" }),
    h("div", { class: "row" }, file, h("button", { type: "submit", id: "ab-import", text: "Import" }), result),
    h("div", { class: "field-error form-error", id: "ab-error" }));
  const link = h("a", { id: "ab-download", hidden: true, text: "download" });
  const exp = h("button", { type: "button", id: "ab-export", text: "Export CSV", onclick: async () => {
    const r = await rpc("addressbook.export", { tenant: tenant() });
    const raw = Uint8Array.from(atob(r.csv_base64), c => c.charCodeAt(0));
    const blob = new Blob([raw], { type: "text/csv" });
    window.abLastExport = blob;  // what was offered for download (read back by the browser test)
    link.href = URL.createObjectURL(blob);
    link.download = `addressbook-${tenant()}.csv`;
    link.dataset.bytes = String(raw.length);
    link.hidden = false;
    link.click();
  } });
  const t = table([["First name", e => e.first_name], ["Last name", e => e.last_name], ["Company", e => e.company],
    ["Private", e => e.private], ["Office", e => e.office], ["Mobile", e => e.mobile]], book.entries, null, e => String(e.id));
  t.id = "ab-table";
  main.replaceChildren(h("h2", { text: "Address book (global)" }),
    h("p", {}, h("b", { id: "ab-total", text: String(book.total) }), ` entries` +
      (book.total > book.entries.length ? ` (the first ${book.entries.length} are shown)` : "")),
    h("div", { class: "row" }, exp, link), form, t);
};

// ---------------------------------------------------------------- provisioning, CDRs, audit, system
VIEWS.phones = async main => {
  const ps = await rpc("phone.list", tenantParam());
  main.replaceChildren(h("h2", { text: "Phone provisioning" }), table([["MAC", p => p.mac], ["Vendor", p => p.vendor], ["Model", p => p.model],
    ["Accounts", p => p.accounts.join(", ")], ["Keys", p => p.keys.map(k => `${k.type}:${k.value}`).join(", ")], ["Transport", p => p.transport],
    ["File", p => `/prov/${p.mac}.${p.vendor === "snom" ? "xml" : "cfg"}`]], ps));
};
VIEWS.cdrs = async main => {
  const since = h("input", { type: "datetime-local", id: "cdr-since" }), until = h("input", { type: "datetime-local", id: "cdr-until" });
  const limit = h("input", { type: "number", value: 100, min: 1, id: "cdr-limit", size: 5 });
  const number = h("input", { type: "text", id: "cdr-number", "data-field": "number", size: 14, placeholder: "caller or called" });
  const box = h("div"), form = h("form", { class: "row", onsubmit: e => { e.preventDefault(); load(); } },
    h("label", {}, "number ", number), h("label", {}, "since ", since), h("label", {}, "until ", until), h("label", {}, "max ", limit),
    h("button", { type: "submit", id: "cdr-filter", text: "Filter" }));
  main.replaceChildren(h("h2", { text: "Call records" }), form, box);
  async function load() {
    const p = { ...tenantParam(), limit: parseInt(limit.value || "100", 10) };
    if (since.value) p.since = new Date(since.value).toISOString();
    if (until.value) p.until = new Date(until.value).toISOString();
    if (number.value.trim()) p.number = number.value.trim();
    try {
      clearErrors(form);
      const cdrs = await rpc("cdr.list", p);
      box.replaceChildren(h("p", { class: "muted", id: "cdr-count", text: `${cdrs.length} call records` }), table([["Start", c => fmtTime(c.start)], ["Tenant", c => c.tenant], ["Caller", c => c.caller], ["Called", c => c.called],
        ["Slot", c => c.switch ? `switch ${c.switch}` : c.slot || ""], ["Answered by", c => c.answered_by], ["End", c => c.end_reason]], cdrs));
    } catch (e) { showError(form, e); }
  }
  await load();
  $("table", box) && ($("table", box).id = "cdr-table");
};
VIEWS.audit = async main => {
  const rows = await rpc("audit.list", { ...tenantParam(), limit: 200 });
  main.replaceChildren(h("h2", { text: "Audit log" }), table([["When", a => fmtTime(a.at)], ["Who", a => a.who], ["Method", a => a.method],
    ["Tenant", a => a.tenant], ["Outcome", a => a.outcome], ["Parameters", a => JSON.stringify(a.params)]], rows));
};
VIEWS.system = async main => {
  const s = await rpc("system.info");
  const l = s.licences || {};
  main.replaceChildren(h("h2", { text: "System information" }), h("div", { class: "grid2 card" },
    labelled("Lic (users / CTI users)", h("span", { id: "sys-lic", text: s.licence && s.licence.users
      ? `users ${s.licence.users.text}, CTI users ${s.licence.cti_users.text}` : `${l.users ?? "?"} / ${l.cti_users ?? "?"}` })),
    labelled("WAN IP", h("span", { text: (s.wan && s.wan.address) || s.wan.reason || "-" })),
    labelled("System", h("span", { text: `hpbx ${s.version} (Python ${s.python})` })),
    labelled("Gui", h("span", { text: document.lastModified })),
    labelled("Uptime", h("span", { text: `${Math.round(s.uptime)} s` })),
    labelled("Config", h("span", { text: s.config }))));
};

// ---------------------------------------------------------------- start
window.addEventListener("hashchange", () => { if (me) route(); });
document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout-btn").addEventListener("click", async () => {
    await fetch("/api/logout", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
    me = null; csrf = ""; showLogin();
  });
  $("#tenant-select").addEventListener("change", () => route());
  const r = await fetch("/api/session", { credentials: "same-origin" });
  if (r.ok) started(await r.json()); else { showLogin(); $("#ready").textContent = "ready"; }
});
