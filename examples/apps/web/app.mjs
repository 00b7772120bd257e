// An edgekd build in the browser through onnxruntime-web (WebAssembly). An image build: draw a digit, the
// model classifies it. A text-generation build: write a prompt, the model's greedy response appears token
// by token (./generate-page.mjs). The preprocessing or prompt format, the labels and the input and output
// names come from the build's manifest.json. The page loads everything from where it is served: the build
// (./model/, or ?build=URL) and onnxruntime-web's scripts and .wasm from ./node_modules; nothing from
// elsewhere.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

import { classify, prepareImage } from "../preprocess.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
// One thread: WebAssembly threads need a cross-origin isolated page (COOP/COEP headers), which a plain
// static file server does not send.
ort.env.wasm.numThreads = 1;

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const build = new URL(new URLSearchParams(location.search).get("build") ?? "model/", location.href);

async function fetchOk(name) {
  const url = new URL(name, build);
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url} answered ${r.status}: put the build folder at web/model (see README.md) or give ?build=URL`);
  return r;
}

async function sha256(bytes) {
  return Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)),
                    (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The build's model in an onnxruntime-web session, its files checked against the manifest's sha256. */
async function loadSession(manifest) {
  const model = new Uint8Array(await (await fetchOk(manifest.model)).arrayBuffer());
  if (await sha256(model) !== manifest.sha256) throw new Error(`${manifest.model} does not match the sha256 in manifest.json`);
  // weights in companion files (external data), named as the model names them: relative to its folder
  const dir = manifest.model.includes("/") ? manifest.model.slice(0, manifest.model.lastIndexOf("/") + 1) : "";
  const externalData = [];
  for (const c of manifest.companions ?? []) {
    const data = new Uint8Array(await (await fetchOk(c.file)).arrayBuffer());
    if (await sha256(data) !== c.sha256) throw new Error(`${c.file} does not match the sha256 in manifest.json`);
    externalData.push({ path: c.file.startsWith(dir) ? c.file.slice(dir.length) : c.file, data });
  }
  return ort.InferenceSession.create(model, { executionProviders: ["wasm"], ...(externalData.length && { externalData }) });
}

async function load() {
  const manifest = await (await fetchOk("manifest.json")).json();
  if (manifest.schema_version !== 1) throw new Error(`manifest schema_version ${manifest.schema_version}; this page reads 1`);
  const kind = manifest.preprocessing.kind;
  if (manifest.format !== "onnx" || (kind !== "image" && kind !== "causal-lm")) {
    throw new Error(`this is a ${manifest.task} build in ${manifest.format}; the page runs ONNX image and text-generation builds`);
  }
  if (kind === "causal-lm") {
    const [page, session] = await Promise.all([import("./generate-page.mjs"), loadSession(manifest)]);
    const generator = await page.start({ ort, manifest, session, build });
    return { manifest, session, generator };
  }
  const session = await loadSession(manifest);
  const [, h, w] = manifest.preprocessing.input_shape;
  pad.width = w;  // the canvas holds the model's raw input, one canvas pixel per input pixel
  pad.height = h;
  clear();
  $("title").textContent = "Draw a digit";
  $("classify").hidden = false;
  return { manifest, session };
}

function clear() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  $("label").textContent = "–";
  $("probability").textContent = "";
  $("top").replaceChildren();
}

// Strokes in canvas pixels: white on black, about 2.5 pixels wide on a 28-pixel pad, as MNIST's digits are.
let last = null;
function at(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}
function stroke(to) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = pad.width * 0.09;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...(last ?? to));
  ctx.lineTo(...to);
  ctx.stroke();
  last = to;
}
pad.addEventListener("pointerdown", (e) => { pad.setPointerCapture(e.pointerId); last = null; stroke(at(e)); });
pad.addEventListener("pointermove", (e) => { if (last) stroke(at(e)); });
pad.addEventListener("pointerup", () => { last = null; predict(); });
$("clear").addEventListener("click", clear);

// Runs one at a time: a session runs one request at a time.
let queue = Promise.resolve();
function predict() {
  queue = queue.then(run, run);
  return queue;
}

async function run() {
  const { manifest, session } = await ready;
  const img = ctx.getImageData(0, 0, pad.width, pad.height);
  const x = prepareImage(manifest, { width: img.width, height: img.height, channels: 4, data: img.data });
  const input = new ort.Tensor("float32", x, [1, ...manifest.preprocessing.input_shape]);
  const out = await session.run({ [manifest.inputs[0].name]: input });
  const result = classify(manifest, out[manifest.output.name].data);
  show(manifest, result);
  return result;
}

function show(manifest, { label, probability, probabilities }) {
  $("label").textContent = label;
  $("probability").textContent = `${(100 * probability).toFixed(1)}%`;
  const order = probabilities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  const cell = (text) => Object.assign(document.createElement("span"), { textContent: text });
  $("top").replaceChildren(...order.map(([p, i]) => {
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.width = `${100 * p}%`;
    const track = Object.assign(document.createElement("span"), { className: "track" });
    track.append(bar);
    const li = document.createElement("li");
    li.append(cell(manifest.labels[i]), track, cell(`${(100 * p).toFixed(1)}%`));
    return li;
  }));
}

const ready = load();
ready.then(
  ({ manifest }) => {
    $("status").textContent = manifest.preprocessing.kind === "image"
      ? `Ready: ${manifest.model} (${manifest.precision}), ${manifest.labels.length} classes. ` +
        "Draw with the mouse or a finger; Clear to start again."
      : `Ready: ${manifest.model} (${manifest.precision}). Write a prompt and press Generate.`;
    document.body.dataset.state = "ready";
  },
  (e) => {
    $("status").textContent = `Could not load the model: ${e.message}`;
    $("status").className = "error";
    document.body.dataset.state = "error";
  },
);

// For scripts and tests that drive the page: the pad, and predict() as a finished stroke runs it; for a
// text-generation build, `ready` gives the generator (./generate-page.mjs).
window.edgekdPage = { ready, predict, pad };
