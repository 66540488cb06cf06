// The nerfsim dashboard: sign in with an API key, upload assets and target sets, create jobs,
// and follow a job live over server-sent events. Plain JavaScript, no build step; every
// request carries the key in an Authorization header (so events, images and downloads are
// fetched rather than linked).

import { PALETTE, lineChart, linspace, logNormalDensity, normalDensity, polarChart } from "./charts.js";

const KEY_STORAGE = "nerfsim.apiKey";
const STAGES = ["queued", "setup", "outer", "final-render", "final-train", "evaluate", "report", "done"];
const TERMINAL = ["succeeded", "failed", "cancelled"];
const FINAL_METRICS = [["test_map50_95", "test mAP50-95"], ["test_map50", "test mAP50"],
                       ["val_map50_95", "validation mAP50-95"], ["val_map50", "validation mAP50"]];

const app = document.getElementById("app");
let leaveView = () => {};

// ------------------------------------------------------------------------------------------
// small helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** The method a job runs: its preset, and the method it overrides the preset's with. */
const methodOf = (job) => {
  const { preset, outer } = job.spec;
  return outer.method ? `${preset} (method ${outer.method})` : preset;
};
const fmt = (value, digits = 3) => (Number.isFinite(value) ? (+value.toPrecision(digits)).toString() : "–");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

function newKey() {
  if (window.crypto && crypto.randomUUID) return `web-${crypto.randomUUID()}`;
  return `web-${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
}

function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

// ------------------------------------------------------------------------------------------
// the API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function describe(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

const api = {
  key: sessionStorage.getItem(KEY_STORAGE),

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  },

  async fetch(method, path, { json, form, headers = {}, signal } = {}) {
    const init = { method, headers: this.headers(headers), signal };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (form) {
      init.body = form;
    }
    let response = await fetch(path, init);
    for (let attempt = 0; method === "GET" && [429, 503].includes(response.status) && attempt < 4; attempt++) {
      const wait = Number(response.headers.get("Retry-After")) || 2 ** attempt;
      await sleep(1000 * Math.min(wait, 30) * (0.75 + Math.random() / 4));
      response = await fetch(path, init);
    }
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = describe((await response.json()).detail);
      } catch (_) { /* not JSON */ }
      if (response.status === 401 && path !== "/v1/jobs?limit=1") signOut(message);
      throw new ApiError(response.status, message);
    }
    return response;
  },

  async json(method, path, options) {
    const response = await this.fetch(method, path, options);
    return response.status === 204 ? null : response.json();
  },

  get: (path, options) => api.json("GET", path, options),
};

/**
 * Follow a job's server-sent events from the first, calling `onEvent({event, data, id})`;
 * reconnects with Last-Event-ID (backoff with jitter) until the final status or `signal` aborts.
 */
async function followEvents(jobId, onEvent, signal) {
  let lastId = null;
  let failures = 0;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream", ...(lastId ? { "Last-Event-ID": lastId } : {}) };
      const response = await api.fetch("GET", `/v1/jobs/${jobId}/events`, { headers, signal });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let afterCR = false;
      let current = { event: "", data: [], id: lastId };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        let text = value;
        if (afterCR && text.startsWith("\n")) text = text.slice(1);
        if (text) afterCR = text.endsWith("\r");
        const lines = (buffer + text).split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (current.data.length) {
              let data;
              try { data = JSON.parse(current.data.join("\n")); } catch (_) { data = { text: current.data.join("\n") }; }
              const event = { event: current.event || "message", data, id: current.id };
              failures = 0;
              lastId = current.id;
              onEvent(event);
              if (event.event === "status" && TERMINAL.includes(data.status)) return;
            }
            current = { event: "", data: [], id: current.id };
          } else if (!line.startsWith(":")) {
            const at = line.indexOf(":");
            const field = at < 0 ? line : line.slice(0, at);
            let rest = at < 0 ? "" : line.slice(at + 1);
            if (rest.startsWith(" ")) rest = rest.slice(1);
            if (field === "event") current.event = rest;
            else if (field === "data") current.data.push(rest);
            else if (field === "id") current.id = rest || null;
          }
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) throw error;
    }
    failures += 1;
    const backoff = Math.min(30000, 500 * 2 ** failures);
    await sleep(backoff / 2 + (Math.random() * backoff) / 2);
  }
}

async function blobUrl(path, signal) {
  const response = await api.fetch("GET", path, { signal });
  return URL.createObjectURL(await response.blob());
}

async function download(path, name, status) {
  status.textContent = "downloading…";
  try {
    const url = await blobUrl(path);
    const link = h("a", { href: url, download: name, style: "display:none" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    status.textContent = "saved";
  } catch (error) {
    status.textContent = `failed: ${error.message}`;
  }
}

// ------------------------------------------------------------------------------------------
// sign in

function signOut(message) {
  api.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  show(signInView(message));
}

function signInView(message) {
  const input = h("input", { id: "api-key", type: "password", placeholder: "nsk_…", autocomplete: "off",
                             required: true, size: 48 });
  const error = h("p", { class: "error", id: "sign-in-error" }, message || "");
  const form = h("form", { id: "sign-in", class: "card sign-in" },
    h("h1", {}, "nerfsim"),
    h("p", { class: "muted" }, "Sign in with an API key (create one with ", h("code", {}, "nerfsim keys create"), ")."),
    h("label", {}, "API key", input),
    h("button", { type: "submit" }, "Sign in"),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    api.key = input.value.trim();
    try {
      await api.get("/v1/jobs?limit=1");
    } catch (failure) {
      api.key = null;
      error.textContent = failure.status === 401 ? `Not signed in: ${failure.message}` : failure.message;
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, api.key);
    location.hash = "#/";
    route();
  });
  return { node: h("main", { class: "centre" }, form) };
}

// ------------------------------------------------------------------------------------------
// home: jobs, assets, targets and the forms

function homeView() {
  const controller = new AbortController();
  const jobsBody = h("tbody", { id: "jobs" });
  const assetsList = h("ul", { id: "assets", class: "records" });
  const targetsList = h("ul", { id: "targets", class: "records" });
  const weightsList = h("ul", { id: "weights", class: "records" });
  const backgroundsList = h("ul", { id: "backgrounds", class: "records" });
  const jobForm = jobFormView();

  async function refresh() {
    const [jobs, assets, targets, weights, backgrounds] = await Promise.all([
      api.get("/v1/jobs?limit=50"), api.get("/v1/assets?limit=200"), api.get("/v1/targets?limit=200"),
      api.get("/v1/weights?limit=200"), api.get("/v1/backgrounds?limit=200")]);
    jobsBody.replaceChildren(...(jobs.data.length ? jobs.data.map(jobRow)
      : [h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No jobs yet: upload an asset and a target set, then create one."))]));
    assetsList.replaceChildren(...assets.data.map((a) => recordItem(a, `${a.kind} · `, a.status, "/v1/assets")));
    targetsList.replaceChildren(...targets.data.map((t) =>
      recordItem(t, `${t.role} · ${t.format} · ${t.num_images} images · `, t.class_names.join(", "), "/v1/targets")));
    weightsList.replaceChildren(...weights.data.map((w) =>
      recordItem(w, `${fmt(w.parameters / 1e6, 2)} M parameters · `, w.class_names.join(", "), "/v1/weights")));
    backgroundsList.replaceChildren(...backgrounds.data.map((b) =>
      recordItem(b, `${b.num_images} photos · `, Object.keys(b.image_sizes).join(", "), "/v1/backgrounds")));
    jobForm.update(assets.data, targets.data, weights.data, backgrounds.data);
  }

  function recordItem(record, prefix, status, base) {
    const remove = h("button", { class: "link", title: "delete", onclick: async () => {
      try { await api.json("DELETE", `${base}/${record.id}`); await refresh(); } catch (error) { alert(error.message); }
    } }, "×");
    return h("li", { "data-id": record.id }, h("strong", {}, record.name), " ",
             h("span", { class: "muted" }, prefix), h("span", { class: `status ${status}` }, status),
             record.error ? h("div", { class: "error" }, record.error) : null, remove);
  }

  const assetForm = uploadForm("asset-form", "Upload asset", "/v1/assets", [
    h("label", {}, "Archive (zip or tar), or a splat .ply", h("input", { type: "file", name: "file", required: true })),
    h("label", {}, "Class name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]*" })),
    h("label", {}, "Kind", h("select", { name: "kind" }, ...["nerfsim", "nerfstudio", "posed-images", "mesh", "splat"]
      .map((k) => h("option", { value: k }, k)))),
    h("details", {}, h("summary", {}, "Build settings (meshes, posed images, splats; a NeRF into a splat)"),
      h("textarea", { name: "build", rows: 3, placeholder: '{"train_minutes": 15, "representation": "splat", "up_axis": "z"}' })),
  ], refresh);
  const targetForm = uploadForm("target-form", "Upload target set", "/v1/targets", [
    h("label", {}, "Archive of a COCO or YOLO set", h("input", { type: "file", name: "file", required: true })),
    h("label", {}, "Name", h("input", { name: "name", required: true })),
    h("label", {}, "Role", h("select", { name: "role" }, ...["validation", "test", "both"]
      .map((r) => h("option", { value: r }, r)))),
    h("label", {}, "Format", h("select", { name: "format" }, h("option", { value: "" }, "detect"),
      h("option", { value: "coco" }, "coco"), h("option", { value: "yolo" }, "yolo"))),
  ], refresh);
  const weightsForm = uploadForm("weights-form", "Upload detector weights", "/v1/weights", [
    h("label", {}, "Ultralytics YOLO detection checkpoint (.pt)", h("input", { type: "file", name: "file", required: true })),
    h("label", {}, "Name", h("input", { name: "name", required: true })),
  ], refresh);
  const backgroundsForm = uploadForm("backgrounds-form", "Upload background photos", "/v1/backgrounds", [
    h("label", {}, "Photos: a zip or tar of them, or one photo", h("input", { type: "file", name: "file", required: true })),
    h("label", {}, "Name", h("input", { name: "name", required: true })),
  ], refresh);

  const node = h("main", { class: "home" },
    h("section", { class: "card wide" }, h("h2", {}, "Jobs"),
      h("table", { class: "jobs" }, h("thead", {}, h("tr", {}, ...["Job", "Status", "Method", "Progress", "Created"]
        .map((t) => h("th", {}, t)))), jobsBody)),
    h("section", { class: "card" }, h("h2", {}, "New job"), jobForm.node),
    h("section", { class: "card" }, h("h2", {}, "Assets"), assetsList, assetForm),
    h("section", { class: "card" }, h("h2", {}, "Target sets"), targetsList, targetForm),
    h("section", { class: "card" }, h("h2", {}, "Detector weights"), weightsList, weightsForm),
    h("section", { class: "card" }, h("h2", {}, "Background photos"), backgroundsList, backgroundsForm));

  (async () => {
    while (!controller.signal.aborted) {
      try { await refresh(); } catch (error) { if (error.status === 401) return; }
      await sleep(document.hidden ? 15000 : 4000);
    }
  })();
  return { node, leave: () => controller.abort() };
}

function jobRow(job) {
  const p = job.progress;
  const progress = p ? `${p.stage} ${p.stage === "outer" ? p.iteration + 1 : p.iteration}/${p.total}` : "";
  return h("tr", { "data-id": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)), h("td", {}, badge(job.status)),
    h("td", {}, methodOf(job)), h("td", {}, progress), h("td", {}, when(job.created_at)));
}

function uploadForm(id, title, path, fields, done) {
  const message = h("p", { class: "message" });
  const form = h("form", { id, class: "upload" }, h("h3", {}, title), ...fields,
                 h("button", { type: "submit" }, "Upload"), message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    for (const [name, value] of [...data.entries()]) if (value === "") data.delete(name);
    message.className = "message";
    message.textContent = "uploading and checking…";
    try {
      const record = await api.json("POST", path, { form: data });
      message.textContent = `uploaded ${record.name} (${record.id})`;
      form.reset();
      await done();
    } catch (error) {
      message.className = "message error";
      message.textContent = error.message;
    }
  });
  return form;
}

/** A box of checkboxes named ``name``, one per record; ``update(records)`` redraws it only when
 * the records changed, so the user's ticks stay. */
function checkList(id, name, label, empty) {
  const box = h("div", { class: "choices", id }, h("span", { class: "muted" }, empty));
  let shown = "";
  function update(records) {
    const signature = records.map((r) => r.id).join();
    if (signature === shown) return;
    const ticked = new Set([...box.querySelectorAll("input:checked")].map((input) => input.value));
    box.replaceChildren(...(records.length ? records.map((r) => h("label", { class: "check" },
      h("input", { type: "checkbox", name, value: r.id, checked: ticked.has(r.id) }), label(r)))
      : [h("span", { class: "muted" }, empty)]));
    shown = signature;
  }
  return { box, update };
}

/** What the job form offers, from the API: the presets and psi's parts (GET /v1/presets), and
 * the job request's sections with their fields' defaults and bounds (its OpenAPI schema). */
async function jobChoices() {
  const [presets, openapi] = await Promise.all([api.get("/v1/presets"), api.get("/openapi.json")]);
  const schemas = openapi.components.schemas;
  const resolve = (schema) => (schema.$ref ? schemas[schema.$ref.split("/").pop()] : schema);
  const request = resolve(openapi.paths["/v1/jobs"].post.requestBody.content["application/json"].schema);
  const section = (name) => resolve(request.properties[name]).properties;
  return { presets, section };
}

/** A number input for a field of the job request's schema: its default, bounds and description. */
function schemaNumber(name, field, attrs = {}) {
  return h("label", { title: field.description }, name.replace(/_/g, " "),
    h("input", { type: "number", name, value: field.default, min: field.minimum, max: field.maximum, ...attrs }));
}

function jobFormView() {
  const assetsList = checkList("job-assets", "assets", (a) => a.name, "no ready assets");
  const backgroundsList = checkList("job-backgrounds", "backgrounds", (b) => `${b.name} (${b.num_images} photos)`,
                                    "none uploaded: generated textures");
  const targetVal = h("select", { name: "target_val", required: true });
  const targetTest = h("select", { name: "target_test" });
  const weightsSelect = h("select", { name: "detector_weights" });
  const presetSelect = h("select", { name: "preset", id: "job-preset" });
  const presetNote = h("p", { class: "muted", id: "job-preset-description" });
  const budgetRow = h("div", { class: "row", id: "job-budget" });
  const learnableBox = h("div", { class: "choices", id: "job-learnable" });
  const presets = new Map();
  let budgetNames = [];
  const describePreset = () => {
    const preset = presets.get(presetSelect.value);
    presetNote.textContent = preset ? preset.description : "";
  };
  presetSelect.addEventListener("change", describePreset);
  jobChoices().then(({ presets: page, section }) => {
    const budget = section("budget");
    budgetNames = Object.keys(budget);
    budgetRow.replaceChildren(...budgetNames.map((name) => schemaNumber(name, budget[name])),
      schemaNumber("image_size", section("detector").image_size, { step: 32 }));
    const learnable = section("psi").learnable.default;
    learnableBox.replaceChildren(...page.parts.map((part) => h("label", { class: "check" },
      h("input", { type: "checkbox", name: "learnable", value: part, checked: learnable.includes(part) }), part)));
    for (const preset of page.data) presets.set(preset.name, preset);
    presetSelect.replaceChildren(...page.data.map((p) => h("option", { value: p.name, selected: p.name === page.default,
      title: JSON.stringify(p.settings) }, p.name === page.default ? `${p.name} (default)` : p.name)));
    describePreset();
  }).catch((error) => { presetNote.textContent = `presets: ${error.message}`; });
  const advanced = h("textarea", { name: "advanced", id: "job-advanced", rows: 4,
                                   placeholder: '{"detector": {"sample_images": 4}, "psi": {"initial": {}}}' });
  const message = h("p", { class: "message" });
  let idempotencyKey = newKey();

  const form = h("form", { id: "job-form" },
    h("fieldset", {}, h("legend", {}, "Objects (classes)"), assetsList.box),
    h("label", {}, "Validation set (drives the loop)", targetVal),
    h("label", {}, "Test set (final metrics)", targetTest),
    h("label", {}, "Detector starts from", weightsSelect),
    h("fieldset", {}, h("legend", {}, "Background photos (none: generated textures)"), backgroundsList.box),
    h("label", {}, "Method preset", presetSelect), presetNote,
    budgetRow,
    h("fieldset", {}, h("legend", {}, "Learnable parts of psi"), learnableBox),
    h("details", {}, h("summary", {}, "Advanced settings (JSON sections, merged into the request)"), advanced),
    h("button", { type: "submit", id: "create-job" }, "Create job"), message);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    // The request is a JobSpec (the same shape as nerfsim optimize's file and the SDK's spec).
    const request = {
      preset: data.get("preset"),
      scene: { assets: data.getAll("assets"), backgrounds: data.getAll("backgrounds") },
      targets: { val: data.get("target_val") },
      budget: Object.fromEntries(budgetNames.map((k) => [k, +data.get(k)])),
      psi: { learnable: data.getAll("learnable") },
      detector: { image_size: +data.get("image_size") },
    };
    if (data.get("target_test")) request.targets.test = data.get("target_test");
    if (data.get("detector_weights")) request.detector.weights = data.get("detector_weights");
    try {
      const extra = advanced.value.trim() ? JSON.parse(advanced.value) : {};
      for (const [key, value] of Object.entries(extra)) {
        request[key] = value && typeof value === "object" && !Array.isArray(value) && request[key]
          ? { ...request[key], ...value } : value;
      }
    } catch (error) {
      message.className = "message error";
      message.textContent = `Advanced settings: ${error.message}`;
      return;
    }
    message.className = "message";
    message.textContent = "creating…";
    try {
      const job = await api.json("POST", "/v1/jobs", { json: request, headers: { "Idempotency-Key": idempotencyKey } });
      idempotencyKey = newKey();
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      message.className = "message error";
      message.textContent = error.message;
    }
  });

  function options(select, targets, roles, optional) {
    const chosen = select.value;
    select.replaceChildren(...(optional ? [h("option", { value: "" }, "none")] : []),
      ...targets.filter((t) => roles.includes(t.role))
        .map((t) => h("option", { value: t.id, selected: t.id === chosen }, `${t.name} (${t.num_images} images)`)));
  }

  return {
    node: form,
    update(assets, targets, weights, backgrounds) {
      assetsList.update(assets.filter((a) => a.status === "ready"));
      backgroundsList.update(backgrounds);
      options(targetVal, targets, ["validation", "both"], false);
      options(targetTest, targets, ["test", "both"], true);
      const chosen = weightsSelect.value;
      weightsSelect.replaceChildren(h("option", { value: "" }, "a random initialisation"),
        ...weights.map((w) => h("option", { value: w.id, selected: w.id === chosen },
                                `${w.name} (${w.class_names.join(", ")})`)));
    },
  };
}

// ------------------------------------------------------------------------------------------
// job page

function jobView(jobId) {
  const controller = new AbortController();
  const state = {
    job: null,
    classNames: [],
    outer: new Map(), // iteration -> {metrics, psi}
    progress: null,
    final: null, // the done stage's metrics (the uniform baseline's among them)
    samples: [],
    pinned: null, // iteration chosen on the slider (null: follow the newest)
  };
  const el = {
    title: h("h1", {}, jobId),
    status: h("span", { id: "job-status" }),
    meta: h("p", { class: "muted", id: "job-meta" }),
    actions: h("div", { class: "actions" }),
    error: h("p", { class: "error", id: "job-error" }),
    stages: h("ol", { class: "stages", id: "stages" }),
    bar: h("div", { class: "bar-fill" }),
    barText: h("span", { id: "progress-text" }),
    message: h("p", { class: "muted", id: "progress-message" }),
    latest: h("dl", { class: "metrics", id: "latest-metrics" }),
    azimuth: h("div", { id: "psi-azimuth", class: "polars" }),
    slider: h("input", { type: "range", id: "psi-iteration", min: 0, max: 0, value: 0, disabled: true }),
    sliderLabel: h("span", { id: "psi-iteration-label", class: "muted" }),
    zoom: h("div", { id: "psi-zoom" }),
    lighting: h("div", { id: "psi-lighting" }),
    loss: h("div", { id: "curve-loss" }),
    map: h("div", { id: "curve-map" }),
    samples: h("div", { id: "samples", class: "samples" }),
    finalTable: h("div", { id: "final-metrics" }),
    artifacts: h("div", { id: "artifacts", class: "artifacts" }),
  };
  el.slider.addEventListener("input", () => {
    const value = +el.slider.value;
    state.pinned = value === +el.slider.max ? null : value;
    schedule();
  });

  const card = (title, ...children) => h("section", { class: "card" }, h("h2", {}, title), ...children);
  const node = h("main", { class: "job" },
    h("header", { class: "job-head card wide" }, h("a", { href: "#/", class: "back" }, "← all jobs"),
      h("div", { class: "title" }, el.title, el.status), el.meta, el.actions, el.error),
    h("section", { class: "card wide progress" }, el.stages,
      h("div", { class: "bar", id: "progress-bar" }, el.bar), el.barText, el.message, el.latest),
    card("Azimuth distribution (psi)", el.azimuth, h("div", { class: "slider" }, el.slider, el.sliderLabel)),
    card("Zoom (camera distance)", el.zoom),
    card("Lighting (exposure)", el.lighting),
    card("Validation loss", el.loss),
    card("mAP", el.map),
    card("Newest samples", el.samples),
    card("Final metrics", el.finalTable),
    card("Artifacts", el.artifacts));

  let frame = 0;
  function schedule() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
  }

  function onEvent({ event, data }) {
    if (event === "status") {
      if (state.job) state.job.status = data.status;
      if (data.error && state.job) state.job.error = data.error;
      if (data.artifacts && state.job) state.job.artifacts = data.artifacts;
      if (TERMINAL.includes(data.status)) loadJob().catch((e) => { el.error.textContent = e.message; });
    } else if (event === "progress") {
      state.progress = data;
      if (data.stage === "outer" && data.psi && data.psi.azimuth && data.message !== "cancelled") {
        state.outer.set(data.iteration, { metrics: data.metrics || {}, psi: data.psi });
      }
      if (data.samples && data.samples.length) state.samples = data.samples;
      if (data.stage === "done") state.final = data.metrics;
    }
    schedule();
  }

  async function loadJob() {
    state.job = await api.get(`/v1/jobs/${jobId}`, { signal: controller.signal });
    for (const entry of state.job.history || []) {
      if (!state.outer.has(entry.iteration)) state.outer.set(entry.iteration, { metrics: entry, psi: null });
    }
    if (state.job.progress && state.job.progress.stage === "done") state.final = state.job.progress.metrics;
    if (!state.progress) state.progress = state.job.progress;
    if (!state.samples.length && state.job.progress && state.job.progress.samples) state.samples = state.job.progress.samples;
    schedule();
  }

  async function showSamples(urls) {
    // Only the newest: replaying a finished job's events must not fetch every iteration's images.
    if (!urls.length || el.samples.dataset.source === urls.join()) return;
    el.samples.dataset.source = urls.join();
    const images = await Promise.all(urls.map(async (url) => {
      try { return h("img", { src: await blobUrl(url, controller.signal), alt: url.split("/").pop() }); } catch (_) { return null; }
    }));
    const loaded = images.filter(Boolean);
    if (el.samples.dataset.source !== urls.join()) { // newer ones are on their way
      for (const image of loaded) URL.revokeObjectURL(image.src);
      return;
    }
    for (const old of el.samples.querySelectorAll("img")) URL.revokeObjectURL(old.src);
    el.samples.replaceChildren(...loaded);
  }

  function render() {
    const job = state.job;
    if (!job) return;
    if (el.status.textContent !== job.status) el.status.replaceChildren(badge(job.status));
    const { outer, scene } = job.spec;
    el.meta.textContent = `${methodOf(job)}${outer.estimator ? ` · ${outer.estimator}` : ""} · ${state.classNames.join(", ") || scene.assets.join(", ")}`
      + ` · created ${when(job.created_at)}${job.finished_at ? ` · finished ${when(job.finished_at)}` : ""}`;
    el.error.textContent = job.error || "";
    renderActions(job);
    renderProgress(job);
    renderPsi();
    renderCurves();
    renderFinal(job);
    renderArtifacts(job);
    showSamples(state.samples);
  }

  function renderActions(job) {
    const signature = [job.status, job.cancel_requested].join();
    if (el.actions.dataset.signature === signature) return; // keep the buttons (and a click on them)
    el.actions.dataset.signature = signature;
    const buttons = [];
    if (!TERMINAL.includes(job.status)) {
      buttons.push(h("button", { id: "cancel-job", onclick: async () => {
        try { state.job = await api.json("POST", `/v1/jobs/${jobId}/cancel`); schedule(); } catch (e) { alert(e.message); }
      } }, job.cancel_requested ? "Cancelling…" : "Cancel"));
    } else {
      if (job.status === "failed" || job.status === "cancelled") {
        buttons.push(h("button", { id: "retry-job", title: "run it again from its last checkpoint", onclick: async () => {
          // The job's event stream starts over: follow it from the start again.
          try { await api.json("POST", `/v1/jobs/${jobId}/retry`); location.reload(); } catch (e) { alert(e.message); }
        } }, "Retry"));
      }
      buttons.push(h("button", { id: "delete-job", class: "secondary", onclick: async () => {
        if (!confirm(`Delete job ${jobId} and its artifacts?`)) return;
        try { await api.json("DELETE", `/v1/jobs/${jobId}`); location.hash = "#/"; } catch (e) { alert(e.message); }
      } }, "Delete"));
    }
    el.actions.replaceChildren(...buttons);
  }

  function renderProgress(job) {
    const p = state.progress;
    const stage = TERMINAL.includes(job.status) ? (job.status === "succeeded" ? "done" : p ? p.stage : "queued")
      : job.status === "queued" ? "queued" : p ? p.stage : "setup";
    const reached = STAGES.indexOf(stage);
    el.stages.replaceChildren(...STAGES.map((s, i) => h("li", {
      class: i < reached || (s === "done" && job.status === "succeeded") ? "passed" : i === reached ? "current" : "" }, s)));
    let fraction = 0;
    let text = job.status;
    if (p && p.total) {
      const done = p.stage === "outer" ? Math.min(p.iteration + 1, p.total) : p.iteration;
      fraction = done / p.total;
      text = `${p.stage}: ${done} / ${p.total}`;
    }
    if (job.status === "succeeded") { fraction = 1; text = "done"; }
    el.bar.style.width = `${Math.round(100 * fraction)}%`;
    el.barText.textContent = text;
    el.barText.dataset.stage = p ? p.stage : job.status;
    el.message.textContent = p && p.message && p.message !== text ? p.message : "";
    const metrics = p && p.metrics ? Object.entries(p.metrics).filter(([, v]) => Number.isFinite(v)).slice(0, 8) : [];
    el.latest.replaceChildren(...metrics.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, fmt(v, 4))]));
  }

  function psiAt(iteration) {
    return state.outer.get(iteration) && state.outer.get(iteration).psi;
  }

  function renderPsi() {
    const iterations = [...state.outer.keys()].filter((t) => psiAt(t)).sort((a, b) => a - b);
    if (!iterations.length) {
      const note = h("p", { class: "muted" }, "Appears after the first outer iteration.");
      el.azimuth.replaceChildren(note);
      el.zoom.replaceChildren(note.cloneNode(true));
      el.lighting.replaceChildren(note.cloneNode(true));
      return;
    }
    const last = iterations[iterations.length - 1];
    const shown = state.pinned !== null && psiAt(state.pinned) ? state.pinned : last;
    Object.assign(el.slider, { min: iterations[0], max: last, value: shown, disabled: iterations.length < 2 });
    el.sliderLabel.textContent = `iteration ${shown + 1} of ${state.job.spec.budget.outer_iterations}`
      + (state.pinned === null ? " (newest)" : "");
    const psi = psiAt(shown);
    const first = psiAt(iterations[0]);
    const names = (i) => state.classNames[i] || `class ${i}`;
    const scaleMax = Math.max(...iterations.flatMap((t) => psiAt(t).azimuth.probs.flat()));
    el.azimuth.dataset.iteration = shown;
    el.azimuth.replaceChildren(...psi.azimuth.probs.map((probs, c) => polarChart({
      probs, edges: psi.azimuth.bin_edges_deg, color: PALETTE[c % PALETTE.length], scaleMax,
      title: `${names(c)} · iteration ${shown + 1}`, id: c === 0 ? "psi-azimuth-chart" : undefined, iteration: shown })));

    const distance = psi.distance_m;
    const zoomLo = Math.min(...first.distance_m.q10, ...distance.q10) * 0.6;
    const zoomHi = Math.max(...first.distance_m.q90, ...distance.q90) * 1.4;
    const zoomXs = linspace(zoomLo, zoomHi, 90);
    el.zoom.replaceChildren(lineChart({
      id: "psi-zoom-chart", xLabel: "camera distance (m)", yLabel: "density",
      series: distance.median.flatMap((median, c) => [
        { name: `${names(c)}`, color: PALETTE[c % PALETTE.length], markers: false,
          points: logNormalDensity(median, distance.q90[c], zoomXs) },
        ...(shown !== iterations[0] ? [{ color: PALETTE[c % PALETTE.length], dash: "4 3", markers: false,
          points: logNormalDensity(first.distance_m.median[c], first.distance_m.q90[c], zoomXs) }] : []),
      ]),
    }));
    const exposure = psi.exposure_stops;
    const spread = Math.max(...exposure.std, ...first.exposure_stops.std);
    const lightXs = linspace(Math.min(...exposure.mean, ...first.exposure_stops.mean) - 3.5 * spread,
                             Math.max(...exposure.mean, ...first.exposure_stops.mean) + 3.5 * spread, 90);
    el.lighting.replaceChildren(lineChart({
      id: "psi-lighting-chart", xLabel: "exposure (stops)", yLabel: "density",
      series: exposure.mean.flatMap((mean, c) => [
        { name: `${names(c)}`, color: PALETTE[c % PALETTE.length], markers: false,
          points: normalDensity(mean, exposure.std[c], lightXs) },
        ...(shown !== iterations[0] ? [{ color: PALETTE[c % PALETTE.length], dash: "4 3", markers: false,
          points: normalDensity(first.exposure_stops.mean[c], first.exposure_stops.std[c], lightXs) }] : []),
      ]),
    }));
    for (const chart of [el.zoom, el.lighting]) {
      chart.append(h("p", { class: "note" }, shown !== iterations[0] ? "dashed: after the first iteration" : ""));
    }
  }

  function renderCurves() {
    const entries = [...state.outer.entries()].sort((a, b) => a[0] - b[0]);
    const series = (key, name, color, dash) => ({ name, color, dash,
      points: entries.map(([t, e]) => [t + 1, e.metrics[key]]).filter(([, y]) => Number.isFinite(y)) });
    el.loss.replaceChildren(lineChart({ id: "curve-loss-chart", xLabel: "outer iteration", yLabel: "detection loss",
      integerX: true, series: [series("val_loss", "validation", PALETTE[0]),
                               series("train_loss", "training (last inner step)", PALETTE[2], "4 3")] }));
    const final = state.final || {};
    el.map.replaceChildren(lineChart({ id: "curve-map-chart", xLabel: "outer iteration", yLabel: "mAP50-95",
      integerX: true, series: [series("val_map50_95", "validation (loop detector)", PALETTE[1])],
      empty: "measured every few iterations",
      hlines: [{ y: final.test_map50_95, label: "final detector, test", color: "#333" },
               { y: final.val_map50_95, label: "final detector, validation", color: "#777", dash: "2 3" }] }));
  }

  function renderFinal(job) {
    if (!state.final) {
      el.finalTable.replaceChildren(h("p", { class: "muted" },
        TERMINAL.includes(job.status) ? "No final metrics (the job did not finish its final stage)."
          : "Measured when the job finishes."));
      return;
    }
    // The job's own uniform baseline (optimizer.uniform_baseline): the same detector and
    // training on renders from the starting psi, scored on the same test images.
    const final = state.final;
    const baseline = Number.isFinite(final.baseline_test_map50_95)
      ? { test_map50_95: final.baseline_test_map50_95, test_map50: final.baseline_test_map50 } : null;
    const rows = FINAL_METRICS.filter(([key]) => Number.isFinite(final[key]));
    const table = h("table", { class: "final" },
      h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", {}, methodOf(job)), h("th", {}, "uniform baseline"),
        h("th", {}, "difference"))),
      h("tbody", {}, ...rows.map(([key, label]) => {
        const ours = final[key];
        const theirs = baseline && key in baseline ? baseline[key] : NaN;
        const delta = ours - theirs;
        const interval = key === "test_map50_95" && Number.isFinite(final.difference_map50_95_low)
          ? ` (95 % bootstrap ${fmt(final.difference_map50_95_low)} … ${fmt(final.difference_map50_95_high)})` : "";
        return h("tr", { "data-metric": key }, h("td", {}, label), h("td", {}, fmt(ours)), h("td", {}, fmt(theirs)),
          h("td", { class: Number.isFinite(delta) ? (delta >= 0 ? "better" : "worse") : "" },
            Number.isFinite(delta) ? `${delta >= 0 ? "+" : ""}${fmt(delta)}${interval}` : "–"));
      })));
    const note = baseline ? "Baseline: the same detector and training on as many renders from the starting psi "
      + "(report.json: per-class AP, psi before and after)."
      : "No uniform baseline in this job (switched off, a uniform job, or too few photos to hold out: see report.json).";
    el.finalTable.replaceChildren(table, h("p", { class: "muted" }, note));
  }

  function renderArtifacts(job) {
    const names = Object.keys(job.artifacts || {}).sort();
    if (el.artifacts.dataset.names === names.join()) return; // keep download states
    el.artifacts.dataset.names = names.join();
    el.artifacts.replaceChildren(...(names.length ? names.map((name) => {
      const status = h("span", { class: "muted", id: `download-status-${name}` });
      return h("div", { class: "artifact" }, h("button", { id: `download-${name}`,
        onclick: () => download(job.artifacts[name], name, status) }, `⬇ ${name}`), status);
    }) : [h("p", { class: "muted" }, "Published when the job ends.")]));
  }

  (async () => {
    try {
      await loadJob();
      state.classNames = await Promise.all(state.job.spec.scene.assets.map((id) =>
        api.get(`/v1/assets/${id}`, { signal: controller.signal }).then((a) => a.name, () => id)));
      await followEvents(jobId, onEvent, controller.signal);
    } catch (error) {
      if (!controller.signal.aborted) el.error.textContent = error.message;
    }
  })();

  return { node, leave: () => controller.abort() };
}

// ------------------------------------------------------------------------------------------
// routing

function show(view) {
  leaveView();
  leaveView = view.leave || (() => {});
  app.replaceChildren(view.node);
  document.getElementById("sign-out").hidden = !api.key;
}

function route() {
  if (!api.key) return show(signInView());
  const match = location.hash.match(/^#\/jobs\/([\w-]+)$/);
  show(match ? jobView(match[1]) : homeView());
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
