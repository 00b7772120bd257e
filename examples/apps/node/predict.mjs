// Classify PNG images with an edgekd image build, through onnxruntime-node:
//
//   node predict.mjs BUILD_DIR IMAGE.png [IMAGE.png ...]
//
// Everything comes from BUILD_DIR/manifest.json: the model file (checked against its sha256), the session
// settings, the preprocessing steps (../preprocess.mjs) and the labels.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import ort from "onnxruntime-node";
import { PNG } from "pngjs";

import { classify, prepareImage } from "../preprocess.mjs";

/** The build at `dir`: {manifest, session}. */
export async function loadBuild(dir) {
  const manifest = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8"));
  if (manifest.schema_version !== 1) {
    throw new Error(`${dir}/manifest.json has schema_version ${manifest.schema_version}; this app reads 1`);
  }
  if (manifest.runtime !== "onnxruntime" || manifest.preprocessing.kind !== "image") {
    throw new Error(`${dir} is a ${manifest.task} build for ${manifest.runtime}; this app runs ONNX image builds`);
  }
  const model = readFileSync(path.join(dir, manifest.model));
  if (createHash("sha256").update(model).digest("hex") !== manifest.sha256) {
    throw new Error(`${manifest.model} does not match the sha256 in manifest.json; copy it again from the build`);
  }
  const session = await ort.InferenceSession.create(model, sessionOptions(manifest));
  return { manifest, session };
}

/** The build's thread count and session settings, in onnxruntime-node's names. */
export function sessionOptions(manifest) {
  const o = manifest.runtime_options ?? {};
  return {
    intraOpNumThreads: manifest.threads,
    interOpNumThreads: o.inter_op_num_threads ?? 1,
    executionMode: o.execution_mode === "ORT_PARALLEL" ? "parallel" : "sequential",
    graphOptimizationLevel: { ORT_DISABLE_ALL: "disabled", ORT_ENABLE_BASIC: "basic",
                              ORT_ENABLE_EXTENDED: "extended" }[o.graph_optimization_level] ?? "all",
  };
}

/** One {label, probability, probabilities} per image ({width, height, channels, data}). */
export async function predict({ manifest, session }, images) {
  const [c, h, w] = manifest.preprocessing.input_shape;
  const x = new Float32Array(images.length * c * h * w);  // (N, C, H, W)
  images.forEach((im, i) => x.set(prepareImage(manifest, im), i * c * h * w));
  const feeds = { [manifest.inputs[0].name]: new ort.Tensor("float32", x, [images.length, c, h, w]) };
  const out = (await session.run(feeds))[manifest.output.name];  // (N, K) class scores
  const k = out.dims[1];
  return images.map((_, i) => classify(manifest, out.data.subarray(i * k, (i + 1) * k)));
}

/** A PNG file as an image: RGBA, 8 bits per channel (pngjs expands gray and palette images). */
export function readPng(file) {
  const png = PNG.sync.read(readFileSync(file));
  return { width: png.width, height: png.height, channels: 4, data: new Uint8Array(png.data) };
}

async function main(args) {
  if (args.length < 2) {
    console.error("usage: node predict.mjs BUILD_DIR IMAGE.png [IMAGE.png ...]");
    return 2;
  }
  const [dir, ...files] = args;
  try {
    const build = await loadBuild(dir);
    const preds = await predict(build, files.map(readPng));
    files.forEach((f, i) => console.log(`${f}: ${preds[i].label} (${preds[i].probability.toFixed(4)})`));
    return 0;
  } catch (e) {
    console.error(`error: ${e.message.split("\n")[0]}`);
    return 2;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
