// The drawing page: strokes on a canvas, sent as PNG to the image API after each stroke.
"use strict";

const LINE_WIDTH = 24;        // at the pad's 280 px: about MNIST's 2-3 px stroke once scaled to 20x20
const INK = "#111111";
const PAPER = "#ffffff";

const pad = document.getElementById("pad");
const padContext = pad.getContext("2d");
const seen = document.getElementById("seen");
const result = document.querySelector(".result");
const errorBox = document.getElementById("error");
const digitOut = document.getElementById("digit");
const confidenceText = document.getElementById("confidence");
const chart = document.getElementById("chart");
const picker = document.getElementById("model-picker");
const modelSelect = document.getElementById("model");
const upload = document.getElementById("upload");
const tokenBox = document.getElementById("token-box");
const tokenInput = document.getElementById("token");

let models = [];        // from GET /models: name, version, labels, preprocessing
let defaultModel = null; // the model POST /predict uses, when the server has one
let stroke = null;      // the stroke being drawn: {id, before (the pad's pixels), points}
let sequence = 0;       // answers to older requests than the latest are dropped
let lastImage = null;   // what was sent last, {image, what}: a new model choice predicts it again

function clearPad() {
  padContext.fillStyle = PAPER;
  padContext.fillRect(0, 0, pad.width, pad.height);
  stroke = null;
  lastImage = null;
  sequence += 1;
  showEmpty("Draw a digit to see what the model thinks it is.");
}

function padPoint(event) {
  // The pad is scaled by CSS; map the pointer to the canvas's own pixels.
  const box = pad.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) * pad.width / box.width,
    y: (event.clientY - box.top) * pad.height / box.height,
  };
}

function drawStroke() {
  // Redraw the whole stroke as one path over the pad as it was before it: segment by segment,
  // the anti-aliased edges of overlapping caps would leave visible seams.
  padContext.putImageData(stroke.before, 0, 0);
  padContext.strokeStyle = INK;
  padContext.lineWidth = LINE_WIDTH;
  padContext.lineCap = "round";
  padContext.lineJoin = "round";
  padContext.fillStyle = INK;
  padContext.beginPath();
  const [first, ...rest] = stroke.points;
  if (!rest.length) {      // a tap leaves a dot
    padContext.arc(first.x, first.y, LINE_WIDTH / 2, 0, 2 * Math.PI);
    padContext.fill();
    return;
  }
  padContext.moveTo(first.x, first.y);
  for (const point of rest) padContext.lineTo(point.x, point.y);
  padContext.stroke();
}

function startStroke(event) {
  if (stroke || (event.pointerType === "mouse" && event.button !== 0)) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  stroke = {
    id: event.pointerId,
    before: padContext.getImageData(0, 0, pad.width, pad.height),
    points: [padPoint(event)],
  };
  drawStroke();
}

function moveStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const move of moves.length ? moves : [event]) stroke.points.push(padPoint(move));
  drawStroke();
}

function endStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  stroke = null;
  pad.toBlob((blob) => predict(blob, "your drawing"), "image/png");
}

function predictUrl() {
  // The default route serves the server's default model; any other is named in the path.
  const chosen = modelSelect.value;
  return !chosen || chosen === defaultModel ? "/predict" : `/models/${encodeURIComponent(chosen)}/predict`;
}

async function predict(image, what) {
  const mine = ++sequence;
  lastImage = { image, what };
  const form = new FormData();
  form.append("image", image, image.name || "drawing.png");
  form.append("return_input", "true");
  result.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(predictUrl(), { method: "POST", body: form, headers: authorization() });
    const answer = await readJson(response);
    if (mine !== sequence || askForToken(response)) return;
    if (!response.ok) {
      showError(`The server refused ${what} (HTTP ${response.status}): ${answer.error || response.statusText}`);
    } else {
      showPrediction(answer, what);
    }
  } catch (err) {
    if (mine === sequence) showError(`Could not reach the server: ${err.message}`);
  } finally {
    if (mine === sequence) result.removeAttribute("aria-busy");
  }
}

function authorization() {
  // Sent only once the server asked for a token (a 401): the page itself needs none.
  const token = tokenInput.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken(response) {
  if (response.status !== 401) return false;
  tokenBox.hidden = false;
  showError("This server needs an API token: type it in the API token field, then draw or upload again.");
  tokenInput.focus();
  return true;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return { error: `the answer was not JSON (${response.headers.get("Content-Type") || "no content type"})` };
  }
}

function labelsFor(name, count) {
  const model = models.find((m) => m.name === name);
  const labels = model && model.labels;
  return labels && labels.length === count ? labels : Array.from({ length: count }, (_, i) => String(i));
}

function showPrediction(answer, what) {
  const prediction = answer.predictions && answer.predictions[0];
  if (!prediction) {
    showError("The server answered without a prediction.");
    return;
  }
  errorBox.hidden = true;
  const percent = (prediction.confidence * 100).toFixed(1);
  digitOut.textContent = prediction.label;
  confidenceText.textContent =
    `${percent}% sure it is ${prediction.label} (${what}; model ${answer.model} v${answer.version})`;
  const probabilities = prediction.probabilities || [];
  drawChart(probabilities, labelsFor(answer.model, probabilities.length), prediction.index);
  drawSeen(prediction.input);
}

function drawChart(probabilities, labels, top) {
  // Before any prediction the bars stand empty, so the layout does not jump on the first answer.
  chart.replaceChildren(...labels.map((name, i) => {
    const shown = probabilities ? `${(probabilities[i] * 100).toFixed(1)}%` : "–";
    const item = document.createElement("li");
    item.className = i === top ? "top" : "";
    item.dataset.label = name;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = probabilities ? shown : "0";
    track.append(bar);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = shown;
    item.append(label, track, value);
    return item;
  }));
}

function drawSeen(pixels) {
  const context = seen.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, seen.width, seen.height);
  if (!Array.isArray(pixels) || !pixels.length) return;
  // One channel: H rows of W values. Several: [C][H][W] or [H][W][C], as the model lays them out.
  const colour = Array.isArray(pixels[0][0]);
  const hwc = colour && pixels[0][0].length <= 4;
  const [rows, cols] = !colour || hwc ? [pixels.length, pixels[0].length] : [pixels[0].length, pixels[0][0].length];
  const channels = !colour ? 1 : hwc ? pixels[0][0].length : pixels.length;
  const value = (y, x, c) => (!colour ? pixels[y][x] : hwc ? pixels[y][x][c] : pixels[c][y][x]);
  // Normalised inputs (the imagenet preset) are stretched to the visible range.
  let low = 0;
  let high = 1;
  for (const v of colour ? pixels.flat(2) : pixels.flat()) {
    if (v < low) low = v;
    if (v > high) high = v;
  }
  seen.width = cols;
  seen.height = rows;
  const image = context.createImageData(cols, rows);
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < cols; x++) {
      const levels = [0, 1, 2].map((c) => Math.round(((value(y, x, Math.min(c, channels - 1)) - low) / (high - low)) * 255));
      image.data.set([...levels, 255], (y * cols + x) * 4);
    }
  }
  context.putImageData(image, 0, 0);
}

function showEmpty(message) {
  digitOut.textContent = "–";
  confidenceText.textContent = message;
  const model = models.find((m) => m.name === modelSelect.value);
  drawChart(null, (model && model.labels) || [], -1);
  drawSeen(null);
  errorBox.hidden = true;
  result.removeAttribute("aria-busy");
}

function showError(message) {
  showEmpty("No prediction.");
  errorBox.textContent = message;
  errorBox.hidden = false;
}

async function loadModels() {
  try {
    const response = await fetch("/models", { headers: authorization() });
    if (askForToken(response)) return;
    const answer = await readJson(response);
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    models = answer.models || [];
    defaultModel = answer.default;
  } catch (err) {
    showError(`Could not list the models: ${err.message}`);
    return;
  }
  if (!models.length) {
    showError("The server has no image classifier loaded, so nothing can be predicted.");
    return;
  }
  modelSelect.replaceChildren(...models.map((m) => new Option(`${m.name} (v${m.version})`, m.name)));
  const preferred = models.find((m) => m.name === defaultModel) || models[0];
  modelSelect.value = preferred.name;
  picker.hidden = models.length < 2;
  showEmpty(confidenceText.textContent);
}

pad.addEventListener("pointerdown", startStroke);
pad.addEventListener("pointermove", moveStroke);
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
document.getElementById("clear").addEventListener("click", clearPad);
upload.addEventListener("change", () => {
  const file = upload.files[0];
  upload.value = "";          // choosing the same file again fires "change" again
  if (file) predict(file, file.name);
});
modelSelect.addEventListener("change", () => {
  if (lastImage) {
    predict(lastImage.image, lastImage.what);
  } else {
    showEmpty(confidenceText.textContent);
  }
});

tokenInput.addEventListener("change", async () => {
  await loadModels();
  if (lastImage) predict(lastImage.image, lastImage.what);
});

clearPad();
loadModels();
