// Runs a `compress ship` bundle in the browser with onnxruntime-web (WebAssembly), loaded from the
// local npm package. Everything the page needs to know (input size, normalization, labels, how the
// training images look) comes from the bundle's model.json, so one page serves any bundle.
//
// Text bundles (model.json "task": "text-classification") get a text box instead: the bundle's tokenizer.json
// runs in wordpiece.js and the typed text is classified as you type.
//
// URL parameters: ?bundle=bundle/ (folder of the bundle), ?model=ort|onnx (which bundled model runs),
// ?threads=1 (WebAssembly threads), ?bench=200 (timed runs for the latency figure).
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { modelInput } from "./preprocess.js";
import { TokenizerError, WordPieceTokenizer } from "./wordpiece.js";

const params = new URLSearchParams(location.search);
const BUNDLE = new URL((params.get("bundle") || "bundle/").replace(/\/?$/, "/"), location.href);
const MODEL_FORMAT = params.get("model") || "ort";
const THREADS = Number(params.get("threads") || 1);
const BENCH_RUNS = Number(params.get("bench") || 200);
const WARMUP_RUNS = 20;

ort.env.wasm.wasmPaths = new URL("node_modules/onnxruntime-web/dist/", location.href).href;
ort.env.wasm.numThreads = THREADS;
ort.env.logLevel = "error";

class BundleError extends Error {}

// What the tests and the console can read: the bundle, the last prediction and its input, timings.
const state = { ready: false, error: null, info: null, lastResult: null, lastInput: null, bench: null, selfTest: null };
window.edgeDemo = state;

const $ = (selector) => document.querySelector(selector);
let session, inputName, outputName, info, files, runQueue = Promise.resolve();

function setStatus(kind, text) {
  const status = $("#status");
  status.dataset.state = kind;
  status.textContent = text;
}

async function fetchChecked(name) {
  let response;
  try {
    response = await fetch(new URL(name, BUNDLE), { cache: "no-store" });
  } catch (err) {
    throw new BundleError(`cannot fetch bundle file ${name}: ${err.message}`);
  }
  if (!response.ok) {
    throw new BundleError(`bundle file ${name} is missing from ${BUNDLE.pathname} (HTTP ${response.status}): ` +
      "copy the whole bundle folder, or re-create it with compress ship");
  }
  return response;
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// model.json, then every file it lists with the sha256 recorded at shipping time.
async function loadBundle() {
  const response = await fetch(new URL("model.json", BUNDLE), { cache: "no-store" }).catch(() => null);
  if (!response || !response.ok) {
    throw new BundleError(`${BUNDLE.pathname}model.json is missing (HTTP ${response ? response.status : "error"}): ` +
      `${BUNDLE.pathname} is not a bundle made by \`compress ship\``);
  }
  let description;
  try {
    description = await response.json();
  } catch (err) {
    throw new BundleError("model.json is not valid JSON: re-create the bundle with compress ship");
  }
  const missing = ["format", "files", "models", "input", "preprocessing", "classes"].filter((k) => !(k in description));
  if (missing.length || description.format !== "compress-bundle") {
    throw new BundleError(`model.json is not a compress bundle description (missing ${missing.join(", ") || "format"}): ` +
      "re-create the bundle with compress ship");
  }
  const contents = {};
  for (const [name, record] of Object.entries(description.files)) {
    const bytes = new Uint8Array(await (await fetchChecked(name)).arrayBuffer());
    const digest = await sha256Hex(bytes);
    if (digest !== record.sha256) {
      throw new BundleError(`bundle file ${name} is corrupt: sha256 ${digest.slice(0, 12)}… does not match ` +
        `model.json's ${record.sha256.slice(0, 12)}…; re-create the bundle with compress ship`);
    }
    contents[name] = bytes;
  }
  return [description, contents];
}

// The predicted label (with its data-* attributes the tests read) and the top-3 bars.
function showPrediction(result, order, source) {
  const box = $("#prediction");
  box.textContent = result.label;
  Object.assign(box.dataset, { label: result.label, index: String(result.index), source,
    probs: JSON.stringify(result.probabilities) });
  $("#topk").replaceChildren(...order.slice(0, 3).map(([p, i]) => {
    const item = document.createElement("li");
    item.innerHTML = `<b></b><span class="bar"><span style="width:${(100 * p).toFixed(1)}%"></span></span>` +
      `<span class="p">${(100 * p).toFixed(1)}%</span>`;
    item.querySelector("b").textContent = info.classes[i];
    return item;
  }));
}

// The bundle's model (?model=onnx|ort) in an onnxruntime-web session; returns the model file's name.
async function createSession() {
  const name = info.models[MODEL_FORMAT];
  if (!name || !(name in files)) {
    throw new BundleError(`model.json names no ${MODEL_FORMAT} model: use ?model=onnx or ?model=ort`);
  }
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  if (MODEL_FORMAT === "ort" && info.ort_format && info.ort_format.replay_saved_optimizations) {
    options.extra = { session: { enable_saved_runtime_optimizations: "1" } };
  }
  try {
    session = await ort.InferenceSession.create(files[name], options);
  } catch (err) {
    throw new BundleError(`onnxruntime-web cannot load ${name}: ${String(err.message || err).split("\n")[0]}`);
  }
  return name;
}

async function openSession() {
  const name = await createSession();
  inputName = session.inputNames[0];
  outputName = session.outputNames[0];
  const declared = [info.input.channels, info.input.height, info.input.width];
  const meta = session.inputMetadata && session.inputMetadata[0];
  const actual = meta && meta.shape ? Array.from(meta.shape).slice(1) : null;
  const same = actual && actual.length === 3 && actual.every((d, i) => d === declared[i]);
  if (session.inputNames.length !== 1 || (actual && !same)) {
    throw new BundleError(`wrong input size: ${name} takes input [${meta ? meta.shape.join(", ") : "?"}] but model.json ` +
      `declares [N, ${declared.join(", ")}]; re-create the bundle`);
  }
  if (!actual) {  // an onnxruntime-web without input metadata: a run with the declared size must work
    try {
      await session.run({ [inputName]: new ort.Tensor("float32", new Float32Array(declared.reduce((a, b) => a * b)), [1, ...declared]) });
    } catch (err) {
      throw new BundleError(`wrong input size: ${name} rejects input [1, ${declared.join(", ")}] that model.json declares`);
    }
  }
  return name;
}

// An image (ImageData of any size) -> the model's input tensor, as model.json's preprocessing says (preprocess.js).
function toTensor(imageData, invert) {
  const { channels: C, height: H, width: W } = info.input;
  return new ort.Tensor("float32", modelInput(imageData, info, invert), [1, C, H, W]);
}

function modelCanvas() {
  const canvas = document.createElement("canvas");
  canvas.width = info.input.width;
  canvas.height = info.input.height;
  return canvas;
}

// An image file (or PNG bytes) decoded at its own size: resizing and cropping are preprocess.js's job, done
// the way Pillow does them, not by the browser's canvas scaling.
async function imageDataFromBlob(blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (err) {
    throw new BundleError("cannot read the image: is it a PNG, JPEG, GIF, BMP or WebP file?");
  }
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

function softmax(logits) {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / sum);
}

// One inference at a time: calls queue behind each other. Takes the image tensor, or a text model's feeds.
function infer(tensor) {
  const feeds = tensor instanceof ort.Tensor ? { [inputName]: tensor } : tensor;
  const job = runQueue.then(async () => {
    const started = performance.now();
    const output = await session.run(feeds);
    return { logits: Array.from(output[outputName].data), ms: performance.now() - started };
  });
  runQueue = job.catch(() => {});
  return job;
}

async function predict(tensor, source) {
  const { logits, ms } = await infer(tensor);
  const probs = softmax(logits);
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
  const best = order[0][1];
  const result = { source, label: info.classes[best], index: best, probabilities: probs, logits, ms };
  state.lastResult = result;
  state.lastInput = Array.from(tensor.data);
  showPrediction(result, order, source);
  showModelInput(tensor);
  showLatency(ms);
  return result;
}

// What the model sees, de-normalized back to pixels.
function showModelInput(tensor) {
  const { channels: C, height: H, width: W } = info.input;
  const view = $("#model-view");
  view.width = W;
  view.height = H;
  const ctx = view.getContext("2d");
  const image = ctx.createImageData(W, H);
  for (let i = 0; i < H * W; i++) {
    for (let k = 0; k < 3; k++) {
      const c = C === 1 ? 0 : k;
      const v = tensor.data[c * H * W + i] * info.preprocessing.std[c] + info.preprocessing.mean[c];
      image.data[4 * i + k] = Math.max(0, Math.min(255, Math.round(255 * v)));
    }
    image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  $("#model-view-caption").textContent = `model input ${W}×${H}`;
}

function showLatency(lastMs) {
  const bench = state.bench;
  const parts = [`last inference ${lastMs.toFixed(3)} ms`];
  if (bench) {
    parts.unshift(`p50 ${bench.p50_ms.toFixed(3)} ms · p90 ${bench.p90_ms.toFixed(3)} ms over ${bench.runs} runs`);
    $("#latency").dataset.p50 = String(bench.p50_ms);
  }
  $("#latency").textContent = `in-browser latency (wasm, ${THREADS} thread${THREADS > 1 ? "s" : ""}): ${parts.join(" · ")}`;
}

function percentile(sorted, q) {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

async function benchmark(tensor) {
  for (let i = 0; i < WARMUP_RUNS; i++) await infer(tensor);
  const times = [];
  for (let i = 0; i < BENCH_RUNS; i++) times.push((await infer(tensor)).ms);
  times.sort((a, b) => a - b);
  return { runs: BENCH_RUNS, warmup_runs: WARMUP_RUNS, p50_ms: percentile(times, 0.5), p90_ms: percentile(times, 0.9),
    p99_ms: percentile(times, 0.99), mean_ms: times.reduce((a, b) => a + b, 0) / times.length,
    timer_resolution: crossOriginIsolated ? "fine (cross-origin isolated)" : "coarse (not isolated)" };
}

// The bundle's known samples: thumbnails to click, and a self-test of every one.
async function selfTest() {
  const samples = info.samples || [];
  const holder = $("#samples");
  holder.replaceChildren();
  let correct = 0;
  const tensors = [];
  for (const sample of samples) {
    const blob = new Blob([files[sample.file]], { type: "image/png" });
    const tensor = toTensor(await imageDataFromBlob(blob), "auto");
    tensors.push(tensor);
    const { logits } = await infer(tensor);
    const ok = info.classes[logits.indexOf(Math.max(...logits))] === sample.label;
    correct += ok;
    const button = document.createElement("button");
    button.type = "button";
    button.title = `${sample.file}: label ${sample.label}${ok ? "" : " (missed)"}`;
    button.className = ok ? "" : "miss";
    const img = document.createElement("img");
    img.src = URL.createObjectURL(blob);
    img.alt = `sample ${sample.label}`;
    button.append(img);
    button.addEventListener("click", () => predict(tensor, `sample:${sample.file}`).catch(showError));
    holder.append(button);
  }
  state.selfTest = { correct, total: samples.length };
  const line = $("#selftest");
  Object.assign(line.dataset, { correct: String(correct), total: String(samples.length) });
  line.textContent = `self-test: ${correct}/${samples.length} known samples correct`;
  return tensors;
}

// Drawing pad: strokes in the training images' ink colour; each change is cropped, scaled and centred
// like the training images (model.json's drawing hints), then classified.
function setUpPad() {
  const pad = $("#pad");
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  const light = (info.drawing || {}).background === "light";
  const [paper, ink] = light ? ["#fff", "#000"] : ["#000", "#fff"];
  pad.style.background = paper;
  let drawing = false, last = null, scheduled = false;
  const clear = () => {
    ctx.fillStyle = paper;
    ctx.fillRect(0, 0, pad.width, pad.height);
  };
  const point = (event) => {
    const rect = pad.getBoundingClientRect();
    return [(event.clientX - rect.left) * pad.width / rect.width, (event.clientY - rect.top) * pad.height / rect.height];
  };
  const stroke = (from, to) => {
    ctx.strokeStyle = ink;
    ctx.lineWidth = pad.width / 14;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
  };
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      const image = drawingToModelSize(pad, ctx, light);
      if (image) {
        predict(toTensor(image, "no"), "drawing")
          .then(() => setStatus("ready", "classifying your drawing live"))
          .catch(showError);
      }
    });
  };
  pad.addEventListener("pointerdown", (event) => {
    drawing = true;
    last = point(event);
    pad.setPointerCapture(event.pointerId);
    stroke(last, last);
    schedule();
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const next = point(event);
    stroke(last, next);
    last = next;
    schedule();
  });
  const stop = () => { drawing = false; };
  pad.addEventListener("pointerup", stop);
  pad.addEventListener("pointercancel", stop);
  $("#clear").addEventListener("click", () => {
    clear();
    $("#prediction").textContent = "–";
    $("#topk").replaceChildren();
  });
  clear();
}

function drawingToModelSize(pad, ctx, light) {
  const { width: PW, height: PH } = pad;
  const rgba = ctx.getImageData(0, 0, PW, PH).data;
  let x0 = PW, y0 = PH, x1 = -1, y1 = -1, mass = 0, mx = 0, my = 0;
  for (let y = 0; y < PH; y++) {
    for (let x = 0; x < PW; x++) {
      const v = rgba[4 * (y * PW + x)] / 255;
      const amount = light ? 1 - v : v;
      if (amount > 0.1) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
        mass += amount; mx += amount * x; my += amount * y;
      }
    }
  }
  if (x1 < 0) return null;
  const { width: W, height: H } = info.input;
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  const fit = (info.drawing && info.drawing.fit_fraction) || 1;
  const scale = fit * Math.min(W, H) / Math.max(bw, bh);
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const dx = clamp(W / 2 - (mx / mass - x0) * scale, 0, W - bw * scale);
  const dy = clamp(H / 2 - (my / mass - y0) * scale, 0, H - bh * scale);
  const target = modelCanvas();
  const tctx = target.getContext("2d", { willReadFrequently: true });
  tctx.fillStyle = light ? "#fff" : "#000";
  tctx.fillRect(0, 0, W, H);
  tctx.imageSmoothingEnabled = true;
  tctx.imageSmoothingQuality = "high";
  tctx.drawImage(pad, x0, y0, bw, bh, dx, dy, bw * scale, bh * scale);
  return tctx.getImageData(0, 0, W, H);
}

function setUpUpload() {
  $("#file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try {
      const image = await imageDataFromBlob(file);
      await predict(toTensor(image, $("#invert").checked ? "auto" : "no"), `upload:${file.name}`);
      setStatus("ready", `classified ${file.name}`);
    } catch (err) {
      showError(err);
    }
  });
}

function describe(modelName) {
  const m = info.metrics || {};
  const size = (info.files[modelName].bytes / 1024).toFixed(1);
  const accuracy = m.accuracy !== undefined ? `, test accuracy ${(100 * m.accuracy).toFixed(2)}%` : "";
  $("#model-info").textContent = `${info.artifact} model (${modelName}, ${size} KB) from ${info.source ? info.source.dataset : "a run"}: ` +
    `${info.input.channels}×${info.input.height}×${info.input.width} input, ${info.classes.length} classes${accuracy}`;
  const python = m.p50_ms !== undefined ? ` · the pipeline measured p50 ${m.p50_ms.toFixed(3)} ms on onnxruntime (Python, ` +
    `${m.threads || 1} thread)` : "";
  $("#footer").textContent = `onnxruntime-web ${ort.env.versions.web} (WebAssembly, ${THREADS} thread${THREADS > 1 ? "s" : ""}, ` +
    `${crossOriginIsolated ? "" : "not "}cross-origin isolated)${python}`;
}

// --- text bundles ---------------------------------------------------------------------------------
let tokenizer;

async function openTextSession() {
  const name = await createSession();
  const declared = info.input.names || [];
  if (session.inputNames.join(",") !== declared.join(",")) {
    throw new BundleError(`${name} takes inputs [${session.inputNames.join(", ")}] but model.json declares ` +
      `[${declared.join(", ")}]; re-create the bundle`);
  }
  outputName = session.outputNames[0];
  const tokenizerFile = (info.tokenizer || {}).file;
  if (!tokenizerFile || !(tokenizerFile in files)) {
    throw new BundleError("model.json lists no tokenizer file: re-create the bundle");
  }
  tokenizer = WordPieceTokenizer.fromJSON(new TextDecoder().decode(files[tokenizerFile]));
  return name;
}

function encodeText(text) {
  return tokenizer.encode(text, { maxLength: info.input.max_length });
}

// Every window of the text (model.json's max_windows; bundles made before windows score the first only).
function encodeTextWindows(text) {
  const maxWindows = info.input.max_windows ?? 1;
  return tokenizer.encodeWindows(text, { maxLength: info.input.max_length, maxWindows });
}

// One [windows, length] feed per input name.
function textFeeds(windows) {
  const feeds = {};
  for (const name of info.input.names) {
    const key = { input_ids: "inputIds", attention_mask: "attentionMask", token_type_ids: "tokenTypeIds" }[name];
    const values = windows.flatMap((w) => w[key]);
    feeds[name] = new ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(v)),
      [windows.length, windows[0][key].length]);
  }
  return feeds;
}

// The text's probabilities: the mean softmax of its windows' logits.
function meanSoftmax(logits, windows) {
  const classes = logits.length / windows;
  const mean = new Array(classes).fill(0);
  for (let w = 0; w < windows; w++) {
    softmax(logits.slice(w * classes, (w + 1) * classes)).forEach((p, i) => { mean[i] += p / windows; });
  }
  return mean;
}

async function predictText(text, source) {
  const windows = encodeTextWindows(text);
  const { logits, ms } = await infer(textFeeds(windows));
  const probs = meanSoftmax(logits, windows.length);
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
  const best = order[0][1];
  const result = { source, text, label: info.classes[best], index: best, probabilities: probs, logits, ms,
    windows: windows.length, inputIds: windows[0].inputIds };
  state.lastResult = result;
  showPrediction(result, order, source);
  const tokens = windows.flatMap((w) => w.tokens.filter((t) => t !== "[PAD]"));
  $("#tokens").textContent = `${windows.length} window${windows.length > 1 ? "s" : ""}, ${tokens.length} tokens: ` +
    tokens.join(" ");
  showLatency(ms);
  return result;
}

async function textSelfTest() {
  const samples = info.samples || [];
  let correct = 0;
  for (const sample of samples) {
    const windows = encodeTextWindows(sample.text);
    const probs = meanSoftmax((await infer(textFeeds(windows))).logits, windows.length);
    correct += info.classes[probs.indexOf(Math.max(...probs))] === sample.label;
  }
  state.selfTest = { correct, total: samples.length };
  const line = $("#text-selftest");
  Object.assign(line.dataset, { correct: String(correct), total: String(samples.length) });
  line.textContent = `self-test: ${correct}/${samples.length} known texts correct`;
}

function setUpTextBox() {
  $("#draw-card").hidden = true;
  $("#upload-card").hidden = true;
  $("#model-view").closest("figure").hidden = true;
  $("#text-card").hidden = false;
  const box = $("#text");
  let pending = null;
  const classify = () => {
    if (!box.value.trim()) return;
    predictText(box.value, "typed").then(() => setStatus("ready", "classifying your text live")).catch(showError);
  };
  box.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(classify, 150);
  });
  $("#classify-text").addEventListener("click", classify);
}

async function textMain() {
  const modelName = await openTextSession();
  const m = info.metrics || {};
  const size = (info.files[modelName].bytes / 1024).toFixed(1);
  const accuracy = m.accuracy !== undefined ? `, test accuracy ${(100 * m.accuracy).toFixed(2)}%` : "";
  $("#model-info").textContent = `${info.artifact} text model (${modelName}, ${size} KB): ` +
    `windows of ${info.input.max_length} tokens (${info.input.max_windows ? `the first ${info.input.max_windows}` : "all"} averaged), ${info.classes.length} classes${accuracy}`;
  $("#footer").textContent = `onnxruntime-web ${ort.env.versions.web} (WebAssembly, ${THREADS} thread${THREADS > 1 ? "s" : ""}); ` +
    `tokenizer: wordpiece.js reading the bundle's tokenizer.json`;
  state.tokenize = (text) => encodeText(text);
  state.tokenizeWindows = (text) => encodeTextWindows(text);
  state.WordPieceTokenizer = WordPieceTokenizer;  // for tests of other tokenizer.json files
  state.classifyText = (text) => predictText(text, "api");
  setUpTextBox();
  await textSelfTest();
  const samples = info.samples || [];
  if (samples.length) {
    state.bench = await benchmark(textFeeds(encodeTextWindows(samples[0].text)));
    await predictText(samples[0].text, "sample:0");
  }
  state.ready = true;
  setStatus("ready", `ready: ${info.artifact} text model checked (sha256 of ${Object.keys(info.files).length} files) and ` +
    `loaded; self-test ${state.selfTest.correct}/${state.selfTest.total}`);
}

function showError(err) {
  const message = err instanceof BundleError || err instanceof TokenizerError ? err.message : `unexpected problem: ${String(err.message || err).split("\n")[0]}`;
  state.error = message;
  setStatus("error", `error: ${message}`);
}

async function main() {
  [info, files] = await loadBundle();
  state.info = info;
  if (info.task === "text-classification") return textMain();
  const modelName = await openSession();
  describe(modelName);
  setUpPad();
  setUpUpload();
  const tensors = await selfTest();
  if (tensors.length) {
    state.bench = await benchmark(tensors[0]);
    await predict(tensors[0], `sample:${info.samples[0].file}`);
  }
  state.ready = true;
  setStatus("ready", `ready: ${info.artifact} model checked (sha256 of ${Object.keys(info.files).length} files) and ` +
    `loaded; self-test ${state.selfTest.correct}/${state.selfTest.total}`);
}

main().catch(showError);
