// The Node.js app on text-generation builds against edgekd's Python runtime. EDGEKD_LM_CASES names a JSON
// file that edgekd's test suite writes (tests/test_lm_apps.py): build folders, prompts with the Python
// runtime's prompt tokens, greedy tokens and text, and texts with the `tokenizers` package's ids.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { generate, loadBuild } from "../predict.mjs";

const CASES = process.env.EDGEKD_LM_CASES;
const cases = CASES ? JSON.parse(readFileSync(CASES, "utf8")) : null;
const skip = cases ? false : "EDGEKD_LM_CASES is not set: tests/test_lm_apps.py writes the cases and runs these tests";
const APP = fileURLToPath(new URL("../predict.mjs", import.meta.url));
const run = promisify(execFile);

test("the tokenizer gives the ids and text of the tokenizers package", { skip }, async () => {
  const { generator } = await loadBuild(cases.tokenizer.build);
  assert.ok(cases.tokenizer.texts.length > 0);
  for (const c of cases.tokenizer.texts) {
    assert.deepEqual(generator.tokenizer.encode(c.text, { add_special_tokens: false }).ids, c.ids, JSON.stringify(c.text));
    assert.equal(generator.decode(c.ids), c.decoded, JSON.stringify(c.text));
  }
});

/** The logits each new token is picked from (the last row of every pass's logits), as the model runs. */
function recordLogits(generator) {
  const { session } = generator;
  const rows = [];
  generator.session = {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    run: async (feeds) => {
      const out = await session.run(feeds);
      const [, t, v] = out.logits.dims;
      rows.push(Array.from(out.logits.data.subarray((t - 1) * v, t * v)));
      return out;
    },
  };
  return rows;
}

/** The largest difference between two lists of logit rows, over the largest logit of `want`. */
function relativeDiff(got, want) {
  let diff = 0;
  let scale = 0;
  want.forEach((row, i) => row.forEach((x, k) => {
    diff = Math.max(diff, Math.abs(got[i][k] - x));
    scale = Math.max(scale, Math.abs(x));
  }));
  return diff / scale;
}

test("prompts, greedy tokens, logits and text are the Python runtime's", { skip }, async () => {
  for (const b of cases.builds) {
    const build = await loadBuild(b.dir);
    const logits = recordLogits(build.generator);
    for (const c of b.prompts) {
      const pieces = [];
      logits.length = 0;
      const result = await generate(build, c.prompt, { maxNewTokens: cases.max_new_tokens,
                                                       out: { write: (p) => pieces.push(p) } });
      const what = `${b.name}: ${JSON.stringify(c.prompt)}`;
      assert.deepEqual(result.promptIds, c.prompt_ids, what);
      assert.deepEqual(result.ids, c.ids, what);
      assert.equal(result.text, c.text, what);
      assert.equal(pieces.join(""), c.text, what);
      assert.equal(result.finishReason, c.finish_reason, what);
      // onnxruntime-node runs the CPU kernels of the Python runtime's onnxruntime: the same numbers
      assert.equal(logits.length, c.logits.length, what);
      const diff = relativeDiff(logits, c.logits);
      assert.ok(diff < 1e-4, `${what}: logits differ by ${diff} of their largest`);
    }
  }
});

test("the command line streams the response to a prompt", { skip }, async () => {
  const b = cases.builds.at(-1);
  for (const c of b.prompts) {
    const { stdout } = await run(process.execPath, [APP, b.dir, "--prompt", c.prompt,
                                                    "--max-new-tokens", String(cases.max_new_tokens)]);
    assert.equal(stdout, `${c.text}\n`);
  }
});

test("a prompt longer than the build's context is refused in one line", { skip }, async () => {
  const b = cases.builds[0];
  await assert.rejects(run(process.execPath, [APP, b.dir, "--prompt", "def add(a, b): ".repeat(40)]), (e) => {
    assert.equal(e.code, 2);
    assert.match(e.stderr, /^error: the prompt is \d+ tokens, at most \d+ \(the build's max_length\); shorten it\n$/);
    return true;
  });
});
