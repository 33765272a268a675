/* The control page: log in as a broker user, show the devices that user may read, send commands with an id and
   show each result beside the command that caused it. Everything goes over one MQTT connection (mqtt.js) as that
   user, so the broker's access rules decide what the page sees and may do; nothing is stored. */
"use strict";

// MQTT 5 says why a publish was refused; a broker that speaks only 3.1.1 refuses version 5 at CONNECT, and the
// page logs in again with 4.
const PROTOCOLS = [5, 4];
const PROTOCOL_NAMES = { 4: "MQTT 3.1.1", 5: "MQTT 5" };
const UNSUPPORTED_PROTOCOL = [1, 0x84]; // CONNACK codes of 3.1.1 and 5
const BAD_LOGIN = [4, 5, 0x86, 0x87]; // bad user name or password, not authorized (3.1.1 and 5)
const RESULT_TIMEOUT_MS = 5000;
const EVENTS_SHOWN = 5;
const LOG_SHOWN = 20;
const RETAINED = ["status", "state", "brightness", "effect"]; // what a node keeps on the broker (last topic level)

const $ = (id) => document.getElementById(id);
const devices = new Map(); // device id -> {root, outputs: Map, inputs: Map, name}
const retained = new Map(); // topic -> payload text, for what arrives before the device's discovery
const pending = new Map(); // command id -> {id, label, output, entry, timer}: commands whose result is awaited
let layout = null;
let client = null;
let protocol = null;
let user = "";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function say(id, text) {
  $(id).textContent = text;
}

function newId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function brokerUrl() {
  const url = new URL("mqtt", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

// ---- logging in -------------------------------------------------------------------------------------------------

function logIn(name, password, versions) {
  const version = versions[0];
  say("connection", `Logging in as ${name}…`);
  const c = mqtt.connect(brokerUrl(), {
    protocolVersion: version,
    username: name,
    password,
    clientId: `${name}-page-${newId()}`, // a client id the broker counts as this user's own
    clean: true,
    keepalive: 30,
    connectTimeout: 15000, // a refused login is answered after the broker's throttling delay
    reconnectPeriod: 0, // until logged in: a refused login is not tried again
    resubscribe: false, // subscribed on every connect instead
  });
  let loggedIn = false;
  let settled = false; // the login's outcome was shown (or the next protocol tried)
  c.on("connect", () => {
    if (!loggedIn) {
      loggedIn = settled = true;
      client = c;
      protocol = version;
      user = name;
      c.options.reconnectPeriod = 3000; // from now on a lost connection comes back by itself
      showLoggedIn();
    }
    say("connection", `Connected as ${name} (${PROTOCOL_NAMES[version]})`);
    subscribe(c);
  });
  c.on("error", (err) => {
    if (loggedIn && BAD_LOGIN.includes(err.code) && client === c) { // the password was changed meanwhile
      logOut();
      say("login-error", "The broker no longer accepts this user and password: log in again.");
      return;
    }
    if (settled) return; // once logged in, close and reconnect tell what happens
    settled = true;
    c.end(true);
    if (UNSUPPORTED_PROTOCOL.includes(err.code) && versions.length > 1) {
      logIn(name, password, versions.slice(1));
    } else if (BAD_LOGIN.includes(err.code)) {
      loginFailed("Wrong user name or password.");
    } else {
      loginFailed(`The broker refused the login: ${err.message}.`);
    }
  });
  c.on("close", () => {
    if (loggedIn) {
      if (client === c) say("connection", "Connection lost: reconnecting…");
    } else if (!settled) {
      settled = true;
      c.end(true);
      loginFailed(`No answer from the broker at ${brokerUrl()}: it is unreachable, or it closed the connection ` +
        "(after many failed logins from one place it stops answering them for a while).");
    }
  });
  c.on("message", onMessage);
}

function loginFailed(text) {
  say("connection", "Not logged in");
  say("login-error", text);
  $("login").querySelector("button").disabled = false;
}

function showLoggedIn() {
  $("login").hidden = true;
  $("logout").hidden = false;
  $("log").hidden = false;
  say("login-error", "");
  $("password").value = "";
}

function logOut() {
  if (client) client.end(true);
  client = null;
  for (const p of pending.values()) clearTimeout(p.timer);
  pending.clear();
  devices.clear();
  retained.clear();
  $("devices").replaceChildren();
  $("results").replaceChildren();
  $("no-devices").hidden = true;
  $("log").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login").querySelector("button").disabled = false;
  say("connection", "Not logged in");
}

function subscribe(c) {
  const filters = [`${layout.discovery_prefix}/+/+/+/config`, `${layout.prefix}/#`];
  // mqtt.js reports any refused filter as an error; the SUBACK's codes tell which
  c.subscribe(filters, { qos: 1 }, (err, granted, packet) => {
    const codes = packet ? packet.granted : [];
    if (codes.length === filters.length && codes.every((code) => code >= 0x80)) {
      noDevices(`The broker lets ${user} read no device: its access rules cover none.`);
    } else if (err && !packet) {
      noDevices(`Subscribing failed: ${err.message}.`);
    } else if (devices.size === 0) {
      noDevices("No device has announced itself yet.");
    }
  });
}

function noDevices(text) {
  $("no-devices").textContent = text;
  $("no-devices").hidden = false;
}

// ---- what the devices publish -----------------------------------------------------------------------------------

function onMessage(topic, payload) {
  const text = new TextDecoder().decode(payload);
  const parts = topic.split("/");
  if (parts[0] === layout.discovery_prefix && parts.length === 5 && parts[4] === "config") {
    onDiscovery(parts[1], parts[2], parts[3], text);
    return;
  }
  if (topic.startsWith(`${layout.prefix}/`)) onDeviceTopic(parts.slice(1), text, topic);
}

function onDiscovery(component, deviceId, object, text) {
  let config = null;
  try {
    config = text ? JSON.parse(text) : null;
  } catch {
    return; // not this project's discovery message
  }
  if (!config) return; // a removal: the entity of another component
  const device = deviceCard(deviceId, config.device && config.device.name);
  const name = config.name || object;
  if (component === "light" || component === "switch") {
    if (!device.outputs.has(object)) addOutput(device, deviceId, object, name, Boolean(config.brightness_command_topic));
  } else if (component === "binary_sensor" || component === "event") {
    if (!device.inputs.has(object)) addInput(device, deviceId, object, name);
  } else {
    return;
  }
  replay(deviceId);
}

function replay(deviceId) {
  for (const [topic, text] of retained) {
    const parts = topic.split("/");
    if (parts[1] === deviceId) onDeviceTopic(parts.slice(1), text, null);
  }
}

function onDeviceTopic(parts, text, topic) {
  if (topic !== null && RETAINED.includes(parts[parts.length - 1])) retained.set(topic, text);
  const device = devices.get(parts[0]);
  if (!device) return;
  if (parts.length === 2 && parts[1] === "status") showAvailability(device, text);
  else if (parts.length === 2 && parts[1] === "result") onResult(text);
  else if (parts.length === 3) {
    const [, name, kind] = parts;
    const output = device.outputs.get(name);
    const input = device.inputs.get(name);
    if (output && kind === "state") showOutputState(output, text);
    else if (output && kind === "brightness") showBrightness(output, text);
    else if (output && kind === "effect") output.effect.textContent = text === "blink" ? "blinking" : "";
    else if (input && kind === "state") showInputState(input, text);
    else if (input && kind === "event" && topic !== null) showEvent(input, text);
  }
}

function deviceCard(deviceId, displayName) {
  let device = devices.get(deviceId);
  if (device) return device;
  const title = el("h2", { id: `device-${deviceId}`, text: displayName || deviceId });
  const availability = el("span", { class: "availability", text: "unknown" });
  const outputs = el("div", { class: "outputs" });
  const inputs = el("div", { class: "inputs" });
  const root = el("article", { class: "card device", "aria-labelledby": title.id, "data-device": deviceId },
    el("div", { class: "device-head" }, title, availability), outputs, inputs);
  device = { root, availability, outputsEl: outputs, inputsEl: inputs, outputs: new Map(), inputs: new Map(),
    name: displayName || deviceId, online: false };
  devices.set(deviceId, device);
  $("devices").append(root);
  $("no-devices").hidden = true;
  return device;
}

function showAvailability(device, text) {
  device.online = text === "online";
  device.availability.textContent = device.online ? "online" : "offline";
  device.availability.classList.toggle("online", device.online);
  device.root.classList.toggle("offline", !device.online);
}

function addOutput(device, deviceId, object, name, pwm) {
  const id = `${deviceId}-${object}`;
  const toggle = el("input", { type: "checkbox", role: "switch", "aria-label": name, id: `switch-${id}` });
  const stateText = el("span", { class: "state-text", text: "off" });
  const blink = el("button", { type: "button", class: "blink", "aria-describedby": `title-${id}` });
  blink.textContent = "Blink";
  const effect = el("span", { class: "effect" });
  const result = el("p", { class: "result", role: "status", id: `result-${id}` });
  const group = el("section", { class: "output", role: "group", "aria-labelledby": `title-${id}` },
    el("h3", { id: `title-${id}`, text: name }),
    el("div", { class: "row" }, el("label", { class: "switch", for: toggle.id }, toggle, stateText), blink, effect));
  const output = { deviceId, object, name, toggle, stateText, effect, result, state: null, slider: null, latest: null };
  toggle.addEventListener("change", () => {
    const wanted = toggle.checked ? "ON" : "OFF";
    send(output, { state: wanted }, `${name} ${wanted.toLowerCase()}`);
  });
  blink.addEventListener("click", () => send(output, { effect: "blink" }, `${name} blink`));
  if (pwm) {
    const slider = el("input", { type: "range", min: "0", max: "255", step: "1", value: "255",
      "aria-label": `${name} brightness`, id: `brightness-${id}` });
    const fade = el("select", { "aria-label": `${name} transition`, id: `fade-${id}` },
      el("option", { value: "0", text: "at once" }), el("option", { value: "1", text: "over 1 s" }),
      el("option", { value: "3", text: "over 3 s" }));
    const shown = el("span", { class: "level", "aria-hidden": "true" }); // the slider says it as aria-valuetext
    slider.addEventListener("input", () => showLevel(output, slider.value));
    slider.addEventListener("change", () => {
      const command = { brightness: Number(slider.value) };
      if (Number(fade.value) > 0) command.transition = Number(fade.value);
      send(output, command, `${name} brightness ${percent(slider.value)}`);
    });
    output.slider = slider;
    output.level = shown;
    group.append(el("div", { class: "row dim" }, el("label", { for: slider.id, text: "Brightness" }), slider, shown),
      el("div", { class: "row" }, el("label", { for: fade.id, text: "Fade" }), fade));
  }
  group.append(result);
  device.outputs.set(object, output);
  device.outputsEl.append(group);
}

function percent(value) {
  return `${Math.round((Number(value) / 255) * 100)} %`;
}

function showOutputState(output, text) {
  output.state = text;
  output.toggle.checked = text === "ON";
  output.stateText.textContent = text === "ON" ? "on" : "off";
}

function showBrightness(output, text) {
  if (!output.slider || !/^\d+$/.test(text)) return;
  output.slider.value = text;
  showLevel(output, text);
}

function showLevel(output, value) {
  output.level.textContent = percent(value);
  output.slider.setAttribute("aria-valuetext", percent(value));
}

function addInput(device, deviceId, object, name) {
  const id = `${deviceId}-${object}`;
  const state = el("span", { class: "state-text", id: `state-${id}`, text: "unknown" });
  const events = el("ol", { class: "events", "aria-label": `${name} events`, "aria-live": "polite" });
  const group = el("section", { class: "input", role: "group", "aria-labelledby": `title-${id}` },
    el("div", { class: "row" }, el("h3", { id: `title-${id}`, text: name }), state), events);
  device.inputs.set(object, { name, state, events });
  device.inputsEl.append(group);
}

function showInputState(input, text) {
  input.state.textContent = text === "ON" ? "on" : "off";
  input.state.classList.toggle("on", text === "ON");
}

function showEvent(input, text) {
  let kind = text;
  try {
    kind = JSON.parse(text).event_type || text;
  } catch {
    // shown as sent
  }
  const time = new Date().toLocaleTimeString();
  input.events.prepend(el("li", { text: `${kind.replace(/_/g, " ")} at ${time}` }));
  while (input.events.children.length > EVENTS_SHOWN) input.events.lastChild.remove();
}

// ---- commands and their results ---------------------------------------------------------------------------------

function send(output, command, label) {
  const id = newId();
  const entry = el("li", { "data-id": id });
  $("results").prepend(entry);
  while ($("results").children.length > LOG_SHOWN) {
    pending.delete($("results").lastChild.dataset.id); // too old to be shown: a late result is not awaited
    $("results").lastChild.remove();
  }
  const p = { id, label, output, entry, timer: setTimeout(() => noAnswer(id), RESULT_TIMEOUT_MS) };
  pending.set(id, p);
  output.latest = id;
  show(p, "sent", "pending");
  const topic = `${layout.prefix}/${output.deviceId}/${output.object}/set`;
  client.publish(topic, JSON.stringify({ ...command, id }), { qos: 1 }, (err) => {
    if (err && pending.has(id)) finish(id, `refused by the broker: ${reason(err)}`, "error");
  });
}

function reason(err) {
  return err.code === 0x87 ? `user ${user} is not allowed to command it` : err.message.replace(/^Publish error: /, "");
}

function noAnswer(id) {
  const p = pending.get(id);
  const device = devices.get(p.output.deviceId);
  let why;
  if (device && !device.online) {
    why = `${device.name} is offline; the command waits for it`;
  } else if (protocol === 4) {
    why = "the broker may have refused it (MQTT 3.1.1 does not say; the broker's log names the rule) " +
      "or the device is slow";
  } else {
    why = "the device did not answer yet";
  }
  // still awaited: a result that comes later replaces this
  show(p, `no result within ${RESULT_TIMEOUT_MS / 1000} s: ${why}`, "error");
  restoreSwitch(p.output);
}

function onResult(text) {
  let result;
  try {
    result = JSON.parse(text);
  } catch {
    return;
  }
  if (!result || !pending.has(result.id)) return; // another client's command
  if (result.ok) finish(result.id, "ok", "ok");
  else finish(result.id, `failed: ${result.error}`, "error");
}

function finish(id, text, kind) {
  const p = pending.get(id);
  pending.delete(id);
  clearTimeout(p.timer);
  show(p, text, kind);
  if (kind === "error") restoreSwitch(p.output);
}

function restoreSwitch(output) {
  if (output.state !== null) showOutputState(output, output.state); // what the device last reported
}

function show(p, text, kind) {
  p.entry.textContent = `${p.label}: ${text}`;
  p.entry.className = kind;
  if (p.output.latest === p.id) { // beside the output: its newest command
    p.output.result.textContent = `${p.label}: ${text}`;
    p.output.result.className = `result ${kind}`;
  }
}

// ---- start ------------------------------------------------------------------------------------------------------

async function start() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("user").value.trim();
    if (!name) {
      say("login-error", "Enter a user name.");
      return;
    }
    say("login-error", "");
    $("login").querySelector("button").disabled = true;
    logIn(name, $("password").value, PROTOCOLS);
  });
  $("logout").addEventListener("click", logOut);
  try {
    const answer = await fetch("layout.json", { cache: "no-cache" });
    layout = await answer.json();
  } catch (err) {
    say("login-error", `The page could not load layout.json (${err.message}): reload it.`);
    return;
  }
  if (layout.trial) {
    $("login-hint").textContent = "Trial mode (a broker without users, on this computer only): any user name, " +
      "no password.";
  }
  $("login").querySelector("button").disabled = false; // disabled in the HTML until the page can log in
}

start();
