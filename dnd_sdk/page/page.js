// The page of `dnd serve`: it asks /v1/models for the labels and the sampler's defaults, and
// POST /v1/images/generations with stream: true for the images, showing each partial image as it comes.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let settings = [];  // the model's stored sampler settings, one number field each

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// the labels matching the search; the chosen one stays chosen while it matches, else the first match is
function showLabels() {
  const query = $("search").value.trim().toLowerCase();
  const chosen = $("labels").value;
  const options = model.labels
    .map((name, id) => ({ name, id }))
    .filter(({ name, id }) => !query || name.toLowerCase().includes(query) || String(id) === query)
    .map(({ name, id }) => new Option(`${name} (${id})`, name));
  $("labels").replaceChildren(...options);
  if (options.some((o) => o.value === chosen)) $("labels").value = chosen;
  else if (options.length) $("labels").selectedIndex = 0;
}

async function loadModel() {
  const r = await fetch("/v1/models");
  model = (await r.json()).data[0];
  $("model").textContent = `${model.id}: ${model.labels.length} labels, ` +
    `${model.image.width}x${model.image.height}, ${model.backend}`;
  settings = Object.keys(model.sampler_defaults);
  $("sampler").replaceChildren(...settings.map((key) => {
    const input = Object.assign(document.createElement("input"),
      { id: key, type: "number", step: "any", value: model.sampler_defaults[key] });
    const label = document.createElement("label");
    label.append(`${key} `, input);
    return label;
  }));
  showLabels();
  $("labels").selectedIndex = 0;  // a label is chosen from the start: Generate works at once
}

function body() {
  const b = {
    model: model.id, prompt: $("labels").value, n: Number($("n").value), seed: Number($("seed").value),
    stream: true, partial_images: Number($("partial_images").value),
  };
  for (const key of settings) b[key] = Number($(key).value);
  const heads = $("head_temperatures").value.trim();
  if (heads) b.head_temperatures = heads.split(",").map(Number);
  return b;
}

// one <figure> per image: its <img>, a caption with its label and seed, and a link to its PNG
function card(label, seed, index) {
  const figure = document.createElement("figure");
  figure.dataset.partials = "0";
  const img = document.createElement("img");
  img.alt = `${label}, seed ${seed}, image ${index}`;
  const caption = document.createElement("figcaption");
  caption.textContent = `${label} · seed ${seed} · image ${index} · sampling…`;
  const link = document.createElement("a");
  link.textContent = "Download PNG";
  link.download = `${label}-seed${seed}-${index}.png`;
  figure.append(img, caption, link);
  $("images").append(figure);
  return figure;
}

function show(figures, name, data) {
  const figure = figures[data.index];
  const src = `data:image/png;base64,${data.b64_json}`;
  figure.querySelector("img").src = src;
  const caption = figure.querySelector("figcaption");
  if (name === "image_generation.partial_image") {
    figure.dataset.partials = String(data.partial_image_index + 1);
    caption.textContent = `${data.label_name} · seed ${data.seed} · image ${data.index} · ` +
      `partial ${data.partial_image_index + 1}`;
  } else {
    caption.textContent = `${data.label_name} · seed ${data.seed} · image ${data.index}`;
    figure.querySelector("a").href = src;
    figure.classList.add("done");
  }
}

// Server-Sent Events from a fetch body (EventSource cannot POST): blocks of "event:" and "data:" lines
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    text += decoder.decode(value, { stream: true });
    let end;
    while ((end = text.indexOf("\n\n")) >= 0) {
      const block = text.slice(0, end);
      text = text.slice(end + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      yield [name, JSON.parse(data)];
    }
  }
}

async function generate(submitted) {
  submitted.preventDefault();
  const b = body();
  $("generate").disabled = true;
  status("generating…");
  try {
    const r = await fetch("/v1/images/generations", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(b),
    });
    if (!r.ok) {
      status((await r.json()).error.message, true);
      return;
    }
    const figures = [...Array(b.n).keys()].map((i) => card(b.prompt, b.seed, i));
    for await (const [name, data] of events(r)) {
      if (name === "error") {
        status(data.error.message, true);
        return;
      }
      show(figures, name, data);
    }
    status(`${b.n} image${b.n > 1 ? "s" : ""} of ${b.prompt}, seed ${b.seed}`);
  } catch (e) {
    status(String(e), true);
  } finally {
    $("generate").disabled = false;
  }
}

$("search").addEventListener("input", showLabels);
$("settings").addEventListener("submit", generate);
loadModel().catch((e) => status(`cannot read /v1/models: ${e}`, true));
