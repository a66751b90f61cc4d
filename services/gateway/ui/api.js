// Talking to the gateway's public API (ARCHITECTURE.md, "The public API"): JSON in and out,
// the access token kept for this tab only (a new one comes from the refresh cookie, which
// scripts cannot read, so a reload keeps you logged in), and every failure turned into an
// ApiError whose message can be shown to people as it is.

const TOKEN_KEY = "dozen.access_token";

/** The access token of this tab (sessionStorage: gone when the tab closes). */
export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  save: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** The problem type of a wrong password given to confirm a change (not a failed session). */
export const WRONG_PASSWORD = "/problems/wrong-password";

/** A failed call: `message` for people, `errors` (field → message) for forms, `type` the problem's. */
export class ApiError extends Error {
  constructor(message, { status = 0, errors = {}, retryAfter = null, type = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.errors = errors;
    this.retryAfter = retryAfter;
    this.type = type;
  }
}

/**
 * A new access token for this tab from the refresh cookie (the browser sends it to the session
 * routes only); whether there is one. The cookie's refresh token is rotated on the way.
 */
export async function resume() {
  try {
    const response = await fetch("/api/sessions/refresh", {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: "{}",
    });
    if (!response.ok) return false;
    const tokens = await response.json();
    session.save(tokens.access_token);
    return true;
  } catch {
    return false;
  }
}

/**
 * Call the API. `auth` sends the access token, first renewed from the refresh cookie when it
 * is missing or refused; a 401 that renewing cannot cure ends the session and fires
 * `dozen:session-ended` on window (the app then shows the login page).
 */
export async function call(method, path, { body, auth = false, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (auth && !session.token() && !(await resume())) {
    endSession();
    throw new ApiError("Log in to see this page.", { status: 401 });
  }
  let response = await send(path, init, auth);
  // A wrong password is a 401 too, but of the request's password, not of the session.
  const sessionRefused = async () => response.status === 401 && (await problemType(response)) !== WRONG_PASSWORD;
  if (auth && (await sessionRefused()) && (await resume())) response = await send(path, init, auth);
  if (response.ok) {
    const text = await response.text();
    try {
      return text ? JSON.parse(text) : null;
    } catch {
      throw new ApiError("The server sent an answer this page cannot read.", { status: response.status });
    }
  }
  const error = await problemOf(response);
  if (auth && response.status === 401 && error.type !== WRONG_PASSWORD) endSession();
  throw error;
}

async function send(path, init, auth) {
  if (auth) init.headers.Authorization = `Bearer ${session.token()}`;
  try {
    return await fetch(path, init);
  } catch {
    throw new ApiError("Cannot reach the server. Check your connection and try again.");
  }
}

/** Log out: this session's refresh token stops working, and this tab forgets its token. */
export async function logOut() {
  try {
    await call("DELETE", "/api/sessions/current", { auth: true });
  } catch {
    // Ended already, or the server is away: the tab forgets the token all the same.
  }
  session.clear();
}

function endSession() {
  session.clear();
  window.dispatchEvent(new CustomEvent("dozen:session-ended"));
}

/** The problem type of an answer, read from a copy (the answer's body stays unread). */
async function problemType(response) {
  try {
    return (await response.clone().json())?.type ?? null;
  } catch {
    return null;
  }
}

/** An ApiError from an RFC 9457 problem answer (or from the status alone). */
async function problemOf(response) {
  const status = response.status;
  if (status === 429) {
    const seconds = retryAfterSeconds(response.headers.get("Retry-After"));
    const message = seconds
      ? `Too many attempts: retry in ${seconds} s.`
      : "Too many attempts: wait a moment, then retry.";
    return new ApiError(message, { status, retryAfter: seconds });
  }
  let problem = {};
  if ((response.headers.get("Content-Type") || "").includes("json")) {
    try {
      problem = (await response.json()) || {};
    } catch {
      problem = {};
    }
  }
  const detail = problem.detail || problem.title;
  const message = detail ? sentence(detail) : fallbackMessage(status);
  const errors = problem.errors && typeof problem.errors === "object" ? problem.errors : {};
  return new ApiError(message, { status, errors, type: problem.type || null });
}

function fallbackMessage(status) {
  if (status >= 500) return `The server could not complete the request (status ${status}). Try again shortly.`;
  return `The request was refused (status ${status}).`;
}

/** Seconds to wait from a Retry-After header: delay-seconds or an HTTP date. */
function retryAfterSeconds(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Math.max(1, Number(value.trim()));
  const date = Date.parse(value);
  if (Number.isNaN(date)) return null;
  return Math.max(1, Math.ceil((date - Date.now()) / 1000));
}

/** "this link is used" → "This link is used." */
export function sentence(text) {
  const trimmed = String(text).trim();
  if (!trimmed) return trimmed;
  const capital = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

/** A random Idempotency-Key (getRandomValues works outside secure contexts too). */
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `ui-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/**
 * Whether this platform has a dev mailbox: the gateway answers 404 on /api/dev/ when it has
 * none (a deployment), and then the UI never mentions it. Asked once per page load.
 */
export const devMailbox = fetch("/api/dev/mailbox?limit=1", { headers: { Accept: "application/json" } }).then(
  (response) => response.ok,
  () => false,
);
