// An edgekd text-generation build in JavaScript: the prompt written as the build wrote its prompts, then
// greedy decoding with the model's key/value cache, as edgekd's Python runtime (edgekd.runtime.Generator)
// does, so both give the same tokens. Shared by the Node.js app (../node) and the web page (../web). It
// imports nothing: each app passes its own onnxruntime (onnxruntime-node or onnxruntime-web), the
// Tokenizer of @huggingface/tokenizers and the Template of @huggingface/jinja, and a function that reads
// the build's files (from disk, or fetched from the page's server).
//
//   const lm = await TextGenerator.load({ ort, Tokenizer, Template }, manifest, session, read);
//   const s = lm.stream("def add(a, b): ...", { maxNewTokens: 64 });
//   for await (const { piece } of s) write(piece);   // then s.result: {promptIds, ids, text, finishReason}

const ARRAYS = { int64: BigInt64Array, int32: Int32Array, float32: Float32Array, float16: Uint16Array };
const SPECIAL = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/** Throws unless `manifest` is a text-generation build this module runs. */
export function checkGenerationManifest(manifest) {
  if (manifest.schema_version !== 1) {
    throw new Error(`manifest.json has schema_version ${manifest.schema_version}; this app reads 1`);
  }
  if (manifest.format !== "onnx" || manifest.preprocessing?.kind !== "causal-lm") {
    throw new Error(`this is a ${manifest.task} build in ${manifest.format}; this runs ONNX text-generation builds`);
  }
}

export class TextGenerator {
  /**
   * The generator of a build whose model is loaded in `session`. `read(path, as)` returns the build file
   * at `path` (relative to the build folder) as "json" or "text", or null when it does not exist.
   */
  static async load(deps, manifest, session, read) {
    checkGenerationManifest(manifest);
    const pre = manifest.preprocessing;
    const dir = pre.tokenizer.includes("/") ? pre.tokenizer.slice(0, pre.tokenizer.lastIndexOf("/") + 1) : "";
    const modelDir = manifest.model.includes("/") ? manifest.model.slice(0, manifest.model.lastIndexOf("/") + 1) : "";
    const [tokenizerJson, tokenizerConfig, legacy, templateFile, config, generationConfig] = await Promise.all([
      read(pre.tokenizer, "json"), read(`${dir}tokenizer_config.json`, "json"),
      read(`${dir}special_tokens_map.json`, "json"), pre.chat_template ? read(`${dir}chat_template.jinja`, "text") : null,
      read(`${modelDir}config.json`, "json"), read(`${modelDir}generation_config.json`, "json")]);
    if (!tokenizerJson) throw new Error(`${pre.tokenizer} named by manifest.json is missing; copy the whole build folder`);
    const files = { tokenizerJson, tokenizerConfig: tokenizerConfig ?? {}, legacy: legacy ?? {}, templateFile,
                    config: config ?? {}, generationConfig: generationConfig ?? {} };
    return new TextGenerator(deps, manifest, session, files);
  }

  constructor({ ort, Tokenizer, Template }, manifest, session, files) {
    this.ort = ort;
    this.manifest = manifest;
    this.session = session;
    const pre = manifest.preprocessing;
    this.instruction = pre.instruction;
    this.context = pre.max_length;  // the build's prompts and responses fit in it
    this.tokenizer = new Tokenizer(files.tokenizerJson, files.tokenizerConfig);
    this.inputs = Object.fromEntries(manifest.inputs.map((i) => [i.name, i]));
    this.past = manifest.inputs.filter((i) => i.name.startsWith("past_key_values.")).map((i) => i.name);
    const names = new Set(session.inputNames);
    const absent = manifest.inputs.map((i) => i.name).filter((n) => !names.has(n));
    if (absent.length || !this.past.length || !session.outputNames.includes("logits")) {
      throw new Error(`${manifest.model} does not take the manifest's inputs (${absent[0] ?? "past_key_values.*"}); ` +
                      "copy the whole build folder again");
    }
    const { config, generationConfig } = files;
    const eos = generationConfig.eos_token_id ?? config.eos_token_id;
    // the manifest's eos and the model's own, as the Python runtime stops
    this.eosIds = new Set([pre.eos_token_id, ...(Array.isArray(eos) ? eos : eos == null ? [] : [eos])]);
    this.maxPositions = ["max_position_embeddings", "n_positions", "max_seq_len"]
      .map((k) => config[k]).find(Number.isInteger) ?? null;
    this.template = pre.chat_template ? chatTemplate(Template, files) : null;
  }

  /**
   * The tokens the model reads for `prompt`: a string is written as the build wrote its prompts (the
   * instruction, a blank line and the prompt, as the user's turn of the chat template with the assistant's
   * turn opened when the build used one); a list of {role, content} messages is used as it is.
   */
  promptIds(prompt) {
    let messages = prompt;
    if (typeof prompt === "string") {
      if (!prompt.trim()) throw new Error("the prompt is empty; give text");
      messages = [{ role: "user", content: this.instruction ? `${this.instruction}\n\n${prompt}` : prompt }];
    }
    if (this.template) {  // the template writes the special tokens itself
      return this.tokenizer.encode(this.template(messages), { add_special_tokens: false }).ids;
    }
    if (messages.length !== 1 || messages[0].role !== "user") {
      throw new Error("this build was distilled without a chat template, so it reads one prompt: give a string");
    }
    return this.tokenizer.encode(`${messages[0].content}\n`, { add_special_tokens: true }).ids;
  }

  /** Token ids -> text, special tokens left out (as the Python runtime's decode). */
  decode(ids) {
    return this.tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  /**
   * The greedy response to the prompt ids `ids`, one new token id at a time: the prompt in one pass, then
   * one token per pass, each pass reading the keys and values the one before returned. It ends after an
   * eos token (which it yields) or `maxNewTokens` tokens.
   */
  tokens(ids, { maxNewTokens }) {
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) {
      throw new Error(`max new tokens must be a whole number >= 1, got ${maxNewTokens}`);
    }
    if (ids.length >= this.context) {
      throw new Error(`the prompt is ${ids.length} tokens, at most ${this.context - 1} (the build's max_length); shorten it`);
    }
    if (this.maxPositions !== null && ids.length + maxNewTokens > this.maxPositions) {
      throw new Error(`a prompt of ${ids.length} tokens plus ${maxNewTokens} new tokens exceeds the model's context ` +
                      `of ${this.maxPositions}; shorten the prompt or ask for fewer tokens`);
    }
    return this.decodeGreedy(ids, maxNewTokens);  // checked now, run as it is read
  }

  async *decodeGreedy(ids, maxNewTokens) {
    const { ort } = this;
    let cache = Object.fromEntries(this.past.map((n) => {  // no tokens seen: zero-length past tensors
      const { shape, dtype } = this.inputs[n];  // (batch, kv_heads, past_sequence, head_dim)
      return [n, new ort.Tensor(dtype, new ARRAYS[dtype](0), [1, shape[1], 0, shape[3]])];
    }));
    let step = ids.map(Number);
    let seen = 0;
    for (let i = 0; i < maxNewTokens; i++) {
      const feeds = { input_ids: this.ints("input_ids", step, [1, step.length]), ...cache };
      if (this.inputs.attention_mask) {  // one unpadded sequence: every position is attended
        feeds.attention_mask = this.ints("attention_mask", new Array(seen + step.length).fill(1), [1, seen + step.length]);
      }
      if (this.inputs.position_ids) {
        feeds.position_ids = this.ints("position_ids", step.map((_, k) => seen + k), [1, step.length]);
      }
      const out = await this.session.run(feeds);
      const token = argmax(out.logits.data, out.logits.dims[2], step.length - 1);
      cache = Object.fromEntries(this.past.map((n) => [n, out[`present.${n.slice("past_key_values.".length)}`]]));
      seen += step.length;
      yield token;
      if (this.eosIds.has(token)) return;
      step = [token];
    }
  }

  /**
   * The greedy response to `prompt` (see promptIds) in pieces, one {token, piece} per new token: the text
   * the token adds, or "" while a character's bytes are incomplete. The prompt and options are checked
   * now, the model runs as the pieces are read; once they end, the stream's `result` holds {promptIds, ids,
   * text, finishReason}.
   */
  stream(prompt, { maxNewTokens = 128 } = {}) {
    const promptIds = this.promptIds(prompt);
    const tokens = this.tokens(promptIds, { maxNewTokens });
    const result = { promptIds, ids: [], text: "", finishReason: null };
    const self = this;
    async function* pieces() {
      for await (const token of tokens) {
        result.ids.push(token);
        // the whole response decoded again: a character split over tokens comes out whole
        const full = self.decode(result.ids);
        const done = self.eosIds.has(token) || result.ids.length === maxNewTokens;
        const end = done ? full.length : full.replace(/\uFFFD+$/u, "").length;
        const piece = end > result.text.length ? full.slice(result.text.length, end) : "";
        result.text += piece;
        if (done) result.finishReason = self.eosIds.has(token) ? "stop" : "length";
        yield { token, piece };
      }
    }
    return Object.assign(pieces(), { result });
  }

  /** Tensor of the integer input `name` (int64 or int32, as the manifest says). */
  ints(name, values, dims) {
    const { dtype } = this.inputs[name];
    const data = dtype === "int64" ? BigInt64Array.from(values, BigInt) : Int32Array.from(values);
    return new this.ort.Tensor(dtype, data, dims);
  }
}

/** The index of the largest logit in row `row` of (rows, vocab) logits; the first one on a tie, as numpy's argmax. */
function argmax(logits, vocab, row) {
  let best = row * vocab;
  for (let i = best + 1; i < (row + 1) * vocab; i++) if (logits[i] > logits[best]) best = i;
  return best - row * vocab;
}

/**
 * The build's chat template as a function of messages, rendered as transformers renders it (the special
 * tokens of tokenizer_config.json in the context, the assistant's turn opened). chat_template.jinja comes
 * first, as transformers reads it first.
 */
function chatTemplate(Template, { tokenizerConfig, legacy, templateFile }) {
  let source = templateFile ?? tokenizerConfig.chat_template;
  if (Array.isArray(source)) source = source.find((t) => t?.name === "default")?.template;
  if (typeof source !== "string" || !source.trim()) {
    throw new Error("the build writes prompts with a chat template, but its tokenizer folder has none " +
                    "(chat_template.jinja); copy the whole build folder");
  }
  const content = (v) => (v && typeof v === "object" ? v.content : v);
  const specials = {};
  for (const name of SPECIAL) {
    const v = content(tokenizerConfig[name] ?? legacy[name]);
    if (typeof v === "string" && v) specials[name] = v;
  }
  const extra = (tokenizerConfig.additional_special_tokens ?? legacy.additional_special_tokens ?? []).map(content);
  if (extra.length) specials.additional_special_tokens = extra;
  const named = tokenizerConfig.extra_special_tokens;
  if (named && typeof named === "object" && !Array.isArray(named)) {
    for (const [k, v] of Object.entries(named)) specials[k] = content(v);
  }
  const template = new Template(source);
  return (messages) => template.render({ messages, tools: null, documents: null, add_generation_prompt: true, ...specials });
}
