// The page for a text-generation build: a prompt box, and the model's greedy response written into the
// page token by token as it is generated (../generate.mjs, the same prompt format and decoding as edgekd's
// Python runtime). The tokenizer (@huggingface/tokenizers) reads the build's tokenizer.json and
// tokenizer_config.json; the chat template is rendered with @huggingface/jinja; both are served from
// ./node_modules, like onnxruntime-web.
import { Template } from "./node_modules/@huggingface/jinja/dist/index.js";
import { Tokenizer } from "./node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs";

import { TextGenerator } from "../generate.mjs";

const $ = (id) => document.getElementById(id);

/** Loads the build's tokenizer and prompt format, shows the prompt box; returns the TextGenerator. */
export async function start({ ort, manifest, session, build }) {
  const read = async (name, as) => {
    const r = await fetch(new URL(name, build));
    if (r.status === 404) return null;  // optional files (chat_template.jinja, generation_config.json)
    if (!r.ok) throw new Error(`${r.url} answered ${r.status}`);
    return as === "json" ? r.json() : r.text();
  };
  const generator = await TextGenerator.load({ ort, Tokenizer, Template }, manifest, session, read);
  $("title").textContent = "Write a prompt";
  if (generator.instruction) {
    $("instruction").textContent = `(the model reads it after its instruction: “${generator.instruction}”)`;
  }
  $("generate").hidden = false;
  $("prompt-form").addEventListener("submit", (e) => {
    e.preventDefault();
    generate($("prompt").value, Number($("max-new-tokens").value)).catch(() => {});
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("prompt-form").requestSubmit();
  });
  $("stop").addEventListener("click", () => { stopping = true; });
  Object.assign(window.edgekdPage, { generator, generate });
  pageGenerator = generator;
  return generator;
}

/** The next frame, or 50 ms where none comes (a hidden tab draws no frames). */
const nextFrame = () => new Promise((resolve) => {
  requestAnimationFrame(() => resolve());
  setTimeout(resolve, 50);
});

let pageGenerator = null;
let running = null;
let stopping = false;

/**
 * Writes the greedy response to `prompt` into the page as it is generated; resolves to the stream's result
 * ({promptIds, ids, text, finishReason}). One generation at a time: a second waits for the first. The
 * response element carries the token ids (data-prompt-ids, data-ids, comma-separated) and, once it ends,
 * data-finish ("stop" at eos, "length" at the token limit, "stopped" by the Stop button).
 */
export function generate(prompt, maxNewTokens) {
  const run = async () => {
    const response = $("response");
    response.textContent = "";
    for (const k of ["promptIds", "ids", "finish"]) delete response.dataset[k];
    $("speed").textContent = "";
    $("run").disabled = true;
    $("stop").disabled = false;
    stopping = false;
    if ($("status").className === "error") Object.assign($("status"), { className: "", textContent: "Ready." });
    document.body.dataset.state = "generating";
    try {
      const stream = pageGenerator.stream(prompt, { maxNewTokens });
      const { result } = stream;
      response.dataset.promptIds = result.promptIds.join(",");
      const t0 = performance.now();
      let first = null;
      for await (const { piece } of stream) {
        first ??= performance.now() - t0;
        if (piece) response.append(piece);
        response.dataset.ids = result.ids.join(",");
        await nextFrame();  // the page draws the new piece, and takes clicks (Stop), before the next token
        if (stopping && !result.finishReason) {  // leaving the loop ends the stream: the model stops
          result.finishReason = "stopped";
          break;
        }
      }
      const s = (performance.now() - t0) / 1000;
      const n = result.ids.length;
      const rate = n > 1 ? ((n - 1) / (s - first / 1000)).toFixed(1) : "–";
      $("speed").textContent = `${n} tokens in ${s.toFixed(2)} s: first after ${first.toFixed(0)} ms ` +
                               `(prompt of ${result.promptIds.length} tokens), then ${rate} tokens/s`;
      response.dataset.finish = result.finishReason;
      return result;
    } catch (e) {
      $("status").textContent = `Could not generate: ${e.message}`;
      $("status").className = "error";
      response.dataset.finish = "error";
      throw e;
    } finally {
      $("run").disabled = false;
      $("stop").disabled = true;
      document.body.dataset.state = "ready";
    }
  };
  running = (running ?? Promise.resolve()).then(run, run);
  return running;
}
