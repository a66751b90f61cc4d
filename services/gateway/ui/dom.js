// Building the page without innerHTML: every text from the API lands in a text node, so no
// answer can inject markup, and nothing here needs inline scripts or styles (the gateway's
// Content-Security-Policy forbids both).

/**
 * `h("button", { class: "primary", onclick: fn }, "Save")`: an element with attributes
 * (`on…` become listeners, `true` sets a boolean attribute, null/false leave it out) and
 * children (strings become text; null, false and undefined are skipped; arrays are flattened).
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

/** Replace `element`'s children, taking them as `h` does (strings, nested arrays, nulls). */
export function setChildren(element, ...children) {
  element.replaceChildren();
  append(element, children);
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : String(child));
  }
}

/** A message line: `role="alert"` for errors (read out at once), `status` otherwise. */
export function messageLine(id) {
  const line = h("p", { id, class: "message", role: "status", hidden: true });
  return line;
}

/** Show `text` in a message line as `kind` ("error", "ok" or "info"); empty text hides it. */
export function say(line, text, kind = "info") {
  line.textContent = text || "";
  line.hidden = !text;
  line.className = `message message-${kind}`;
  line.setAttribute("role", kind === "error" ? "alert" : "status");
}

/**
 * A labelled input with a hint and a place for its error, tied together for screen readers.
 * `name` is the API's field name, so a problem's `errors` map lands next to the right field.
 */
export function field({ form, name, label, type = "text", value = "", hint = "", autocomplete = "off", required = false }) {
  const id = `${form}-${name}`;
  const hintId = hint ? `${id}-hint` : null;
  const errorId = `${id}-error`;
  const input = h("input", {
    id,
    name,
    type,
    autocomplete,
    required,
    "aria-describedby": [hintId, errorId].filter(Boolean).join(" "),
  });
  input.value = value;
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("p", { id: hintId, class: "hint" }, hint) : null,
    h("p", { id: errorId, class: "field-error", hidden: true }),
  );
}

/** Put each of `errors` (field → message) next to its field; the names not found are returned. */
export function showFieldErrors(form, errors) {
  clearFieldErrors(form);
  const unplaced = [];
  let first = null;
  for (const [name, text] of Object.entries(errors || {})) {
    const input = form.elements.namedItem(name);
    const line = input && form.querySelector(`#${CSS.escape(input.id)}-error`);
    if (!line) {
      unplaced.push(`${name}: ${text}`);
      continue;
    }
    line.textContent = capitalised(text);
    line.hidden = false;
    input.setAttribute("aria-invalid", "true");
    first = first || input;
  }
  if (first) first.focus();
  return unplaced;
}

/** Remove every field error from `form`. */
export function clearFieldErrors(form) {
  for (const line of form.querySelectorAll(".field-error")) {
    line.textContent = "";
    line.hidden = true;
  }
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

function capitalised(text) {
  const value = String(text);
  return value ? value[0].toUpperCase() + value.slice(1) : value;
}

/**
 * Run `action` on submit with the form marked busy (its submit button disabled), so a double
 * click sends one request.
 */
export function onSubmit(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (form.getAttribute("aria-busy") === "true") return;
    const buttons = form.querySelectorAll("button");
    form.setAttribute("aria-busy", "true");
    for (const button of buttons) button.disabled = true;
    try {
      await action();
    } finally {
      form.setAttribute("aria-busy", "false");
      for (const button of buttons) button.disabled = false;
    }
  });
}

/** Run `action` on click with the button disabled meanwhile. */
export function onClick(button, action) {
  button.addEventListener("click", async () => {
    if (button.disabled) return;
    button.disabled = true;
    try {
      await action();
    } finally {
      button.disabled = false;
    }
  });
}

/** "chess, Go ,," → ["chess", "Go"]. */
export function parseList(text) {
  return text
    .split(",")
    .map((item) => item.trim())
    .filter(Boolean);
}

/** A date (ISO 8601) as people read it here. */
export function formatDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element (`h` makes HTML ones, which an `<svg>` does not draw). */
function svg(tag, attributes = {}) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  return element;
}

/**
 * A sparkline of `points` ([seconds, value or null], oldest first) over the `window` seconds
 * ending at `end`, from 0 up to the largest value (at least `floor`): one line per run of
 * values, so a null (no figure then) is a gap. Labelled `label` for screen readers.
 */
export function sparkline(points, { end, window, floor, label }) {
  const width = 160;
  const height = 36;
  const top = Math.max(floor, ...points.map(([, value]) => (Number.isFinite(value) ? value : 0)));
  const x = (at) => (width * (window - (end - at))) / window;
  const y = (value) => height - 2 - ((height - 4) * value) / top;
  const chart = svg("svg", { class: "sparkline", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  chart.append(svg("line", { class: "sparkline-axis", x1: 0, y1: height - 1, x2: width, y2: height - 1 }));
  let run = [];
  const draw = () => {
    if (run.length === 1) chart.append(svg("circle", { class: "sparkline-dot", cx: run[0][0], cy: run[0][1], r: 1.5 }));
    if (run.length > 1) chart.append(svg("polyline", { class: "sparkline-line", points: run.map((point) => point.join(",")).join(" ") }));
    run = [];
  };
  for (const [at, value] of points) {
    if (Number.isFinite(value) && at >= end - window) run.push([x(at).toFixed(1), y(value).toFixed(1)]);
    else draw();
  }
  draw();
  return chart;
}
