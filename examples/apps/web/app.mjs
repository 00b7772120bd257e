// Draw a digit; an edgekd INT8 build classifies it in the browser through onnxruntime-web (WebAssembly).
// The preprocessing, the labels and the input and output names come from the build's manifest.json. The
// page loads everything from where it is served: the build (./model/, or ?build=URL) and onnxruntime-web's
// scripts and .wasm from ./node_modules; nothing from elsewhere.
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

async function load() {
  const manifest = await (await fetchOk("manifest.json")).json();
  if (manifest.schema_version !== 1) throw new Error(`manifest schema_version ${manifest.schema_version}; this page reads 1`);
  if (manifest.format !== "onnx" || manifest.preprocessing.kind !== "image") {
    throw new Error(`this is a ${manifest.task} build in ${manifest.format}; the page runs ONNX image builds`);
  }
  const model = new Uint8Array(await (await fetchOk(manifest.model)).arrayBuffer());
  const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", model)),
                            (b) => b.toString(16).padStart(2, "0")).join("");
  if (digest !== manifest.sha256) throw new Error(`${manifest.model} does not match the sha256 in manifest.json`);
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  const [, h, w] = manifest.preprocessing.input_shape;
  pad.width = w;  // the canvas holds the model's raw input, one canvas pixel per input pixel
  pad.height = h;
  clear();
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
    $("status").textContent = `Ready: ${manifest.model} (${manifest.precision}), ${manifest.labels.length} classes. ` +
                              "Draw with the mouse or a finger; Clear to start again.";
    document.body.dataset.state = "ready";
  },
  (e) => {
    $("status").textContent = `Could not load the model: ${e.message}`;
    $("status").className = "error";
    document.body.dataset.state = "error";
  },
);

// For scripts and tests that drive the page: the pad, and predict() as a finished stroke runs it.
window.edgekdPage = { ready, predict, pad };
