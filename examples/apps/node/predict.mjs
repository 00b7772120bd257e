// Run an edgekd build through onnxruntime-node: classify PNG images with an image build, or write the
// response to a prompt with a text-generation build (streamed as it is generated, greedy):
//
//   node predict.mjs BUILD_DIR IMAGE.png [IMAGE.png ...]
//   node predict.mjs BUILD_DIR --prompt "def add(a, b): return a + b" [--max-new-tokens 64]
//
// Everything comes from BUILD_DIR/manifest.json: the model file (checked against its sha256), the session
// settings, the preprocessing steps (../preprocess.mjs) and the labels, or the tokenizer and the prompt
// format (../generate.mjs).
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import ort from "onnxruntime-node";
import { PNG } from "pngjs";

import { TextGenerator } from "../generate.mjs";
import { classify, prepareImage } from "../preprocess.mjs";

/** The build at `dir`: {manifest, session}, and `generator` (a TextGenerator) for a text-generation build. */
export async function loadBuild(dir) {
  const manifest = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8"));
  if (manifest.schema_version !== 1) {
    throw new Error(`${dir}/manifest.json has schema_version ${manifest.schema_version}; this app reads 1`);
  }
  const kind = manifest.preprocessing.kind;
  if (manifest.runtime !== "onnxruntime" || (kind !== "image" && kind !== "causal-lm")) {
    throw new Error(`${dir} is a ${manifest.task} build for ${manifest.runtime}; this app runs ONNX image and ` +
                    "text-generation builds");
  }
  const model = readFileSync(path.join(dir, manifest.model));
  for (const [name, data, digest] of [[manifest.model, model, manifest.sha256],
    ...manifest.companions.map((c) => [c.file, readFileSync(path.join(dir, c.file)), c.sha256])]) {
    if (createHash("sha256").update(data).digest("hex") !== digest) {
      throw new Error(`${name} does not match the sha256 in manifest.json; copy it again from the build`);
    }
  }
  // weights in companion files (external data) are found beside the model's path, not in a buffer
  const session = await ort.InferenceSession.create(manifest.companions.length ? path.join(dir, manifest.model) : model,
                                                    sessionOptions(manifest));
  if (kind === "image") return { manifest, session };
  const read = (name, as) => {
    const file = path.join(dir, name);
    if (!existsSync(file)) return null;
    const text = readFileSync(file, "utf8");
    return as === "json" ? JSON.parse(text) : text;
  };
  const generator = await TextGenerator.load({ ort, Tokenizer, Template }, manifest, session, read);
  return { manifest, session, generator };
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

/** Writes the greedy response to `prompt` to `out` as it is generated; returns the stream's result. */
export async function generate({ generator }, prompt, { maxNewTokens = 128, out = process.stdout } = {}) {
  const stream = generator.stream(prompt, { maxNewTokens });
  for await (const { piece } of stream) if (piece) out.write(piece);
  return stream.result;
}

const USAGE = "usage: node predict.mjs BUILD_DIR IMAGE.png [IMAGE.png ...]\n" +
              "       node predict.mjs BUILD_DIR --prompt TEXT [--max-new-tokens N]";

async function main(argv) {
  let args;
  try {
    args = parseArgs({ args: argv, allowPositionals: true,
                       options: { prompt: { type: "string" }, "max-new-tokens": { type: "string", default: "128" } } });
  } catch (e) {
    console.error(`error: ${e.message.split("\n")[0]}\n${USAGE}`);
    return 2;
  }
  const [dir, ...files] = args.positionals;
  const { prompt } = args.values;
  if (!dir || (prompt === undefined) === !files.length) {
    console.error(USAGE);
    return 2;
  }
  try {
    const build = await loadBuild(dir);
    if (build.generator) {
      if (prompt === undefined) throw new Error(`${dir} is a text-generation build: give --prompt TEXT`);
      const n = Number(args.values["max-new-tokens"]);
      await generate(build, prompt, { maxNewTokens: n });
      process.stdout.write("\n");
      return 0;
    }
    if (prompt !== undefined) throw new Error(`${dir} is a ${build.manifest.task} build: give PNG files, not --prompt`);
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
