// The Node.js app against edgekd's own outputs. EDGEKD_APP_CASES names a JSON file that edgekd's test suite
// writes (tests/test_apps.py): a build folder, test digits as PNG files and pixels with the Python
// runtime's probabilities, and preprocessing cases (manifest steps, an image, Python's model input).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { prepareImage } from "../../preprocess.mjs";
import { loadBuild, predict } from "../predict.mjs";

const CASES = process.env.EDGEKD_APP_CASES;
const cases = CASES ? JSON.parse(readFileSync(CASES, "utf8")) : null;
const skip = cases ? false : "EDGEKD_APP_CASES is not set: tests/test_apps.py writes the cases and runs these tests";
const APP = fileURLToPath(new URL("../predict.mjs", import.meta.url));
const ARRAYS = { uint8: Uint8Array, float32: Float32Array, float64: Float64Array };

test("preprocessing read from the manifest gives the Python runtime's model input, bit for bit", { skip }, async (t) => {
  assert.ok(cases.preprocessing.length > 0);
  for (const c of cases.preprocessing) {
    await t.test(c.name, () => {
      const im = { ...c.image, data: ARRAYS[c.image.dtype].from(c.image.data) };
      assert.deepEqual(Array.from(prepareImage(c.manifest, im)), c.expected);
    });
  }
});

test("the INT8 model gives the Python runtime's labels and probabilities", { skip }, async () => {
  const build = await loadBuild(cases.build);
  const images = cases.digits.map((d) => ({ width: d.width, height: d.height, channels: 1, data: Uint8Array.from(d.pixels) }));
  const preds = await predict(build, images);
  assert.equal(preds.length, cases.digits.length);
  preds.forEach((p, i) => {
    const want = cases.digits[i];
    assert.equal(p.label, want.label, `digit ${i}`);
    const diff = Math.max(...p.probabilities.map((v, k) => Math.abs(v - want.probabilities[k])));
    assert.ok(diff < 1e-4, `digit ${i}: probabilities differ by ${diff}`);
  });
});

test("the command line prints each PNG file's label and probability", { skip }, async () => {
  const files = cases.digits.map((d) => d.file);
  const { stdout } = await promisify(execFile)(process.execPath, [APP, cases.build, ...files]);
  const lines = stdout.trim().split("\n");
  assert.equal(lines.length, files.length);
  lines.forEach((line, i) => {
    const want = cases.digits[i];
    const m = line.match(/^(.+): (\S+) \((0\.\d{4}|1\.0000)\)$/);
    assert.ok(m, `unexpected line: ${line}`);
    assert.deepEqual([m[1], m[2]], [files[i], want.label]);
    assert.ok(Math.abs(Number(m[3]) - want.probability) <= 1e-4, line);
  });
});

test("a model file that does not match the manifest's sha256 is refused", { skip }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "edgekd-node-"));
  const manifest = JSON.parse(readFileSync(path.join(cases.build, "manifest.json"), "utf8"));
  copyFileSync(path.join(cases.build, "manifest.json"), path.join(dir, "manifest.json"));
  const model = readFileSync(path.join(cases.build, manifest.model));
  model[model.length - 1] ^= 1;
  writeFileSync(path.join(dir, manifest.model), model);
  await assert.rejects(loadBuild(dir), /does not match the sha256/);
});
