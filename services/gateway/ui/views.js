// The pages of the UI. Each view builds its own element tree and fills it as answers come;
// when the reader moves on, late answers land in a detached tree and change nothing.
// `ctx` carries the route's argument, an AbortSignal that fires when the view is left, and
// `go(route, flash)` to move to another route with a one-time message.

import { ApiError, WRONG_PASSWORD, call, devMailbox, newIdempotencyKey, session } from "./api.js";
import {
  clearFieldErrors,
  field,
  formatDate,
  h,
  messageLine,
  onClick,
  onSubmit,
  parseList,
  say,
  setChildren,
  showFieldErrors,
  sparkline,
} from "./dom.js";

/** How often the mailbox looks for new mail while it is shown. */
const MAILBOX_REFRESH_MS = 3000;

/** How often, at least, the status page's charts are redrawn while shown. */
const CHARTS_REFRESH_MS = 5000;

/** Show a failed call: field errors beside their fields, the rest in `line`. */
function showError(line, error, form = null) {
  if (!(error instanceof ApiError)) {
    say(line, `Something went wrong on this page: ${error}`, "error");
    return;
  }
  const unplaced = form
    ? showFieldErrors(form, error.errors)
    : Object.entries(error.errors).map(([name, text]) => `${name}: ${text}`);
  const text = unplaced.length ? `${error.message} ${unplaced.join("; ")}` : error.message;
  say(line, text, "error");
}

function heading(text) {
  return h("h1", { tabindex: "-1" }, text);
}

function refreshButton(id, load) {
  const button = h("button", { id, type: "button", class: "secondary" }, "Refresh");
  onClick(button, load);
  return button;
}

// --- Sign up ----------------------------------------------------------------------------------

/** `#/signup`: the form, then "check your mail". */
export function signup(ctx) {
  const line = messageLine("signup-message");
  const form = h(
    "form",
    { id: "signup-form", novalidate: true },
    field({ form: "signup", name: "email", label: "Email", type: "email", autocomplete: "email" }),
    field({
      form: "signup",
      name: "password",
      label: "Password",
      type: "password",
      autocomplete: "new-password",
      hint: "At least 8 characters.",
    }),
    field({
      form: "signup",
      name: "display_name",
      label: "Display name",
      autocomplete: "nickname",
      hint: "How other people see you.",
    }),
    field({
      form: "signup",
      name: "interests",
      label: "Interests",
      hint: "Separated by commas, e.g. chess, sailing. People who share them are suggested to you.",
    }),
    h("button", { type: "submit", class: "primary" }, "Sign up"),
  );
  // Sending the same signup again after a lost answer (network failure, 5xx) reuses its key,
  // so it cannot make a second account; a changed signup, or one answered, gets a new key.
  let key = null;
  let keyFor = null;
  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(line, "");
    const email = form.elements.email.value.trim();
    const body = {
      email,
      password: form.elements.password.value,
      display_name: form.elements.display_name.value.trim(),
      interests: parseList(form.elements.interests.value),
    };
    const signup = JSON.stringify({ ...body, password: null });
    if (signup !== keyFor) {
      key = newIdempotencyKey();
      keyFor = signup;
    }
    try {
      await call("POST", "/api/signups", { body, headers: { "Idempotency-Key": key } });
      keyFor = null;
      ctx.go(`check-mail/${encodeURIComponent(email)}`);
    } catch (error) {
      if (error.status >= 400 && error.status < 500) keyFor = null;
      showError(line, error, form);
    }
  });
  return [
    heading("Create your account"),
    form,
    line,
    h("p", {}, "Already have an account? ", h("a", { href: "#/login" }, "Log in"), "."),
  ];
}

/** `#/check-mail/<email>`: after a signup. */
export function checkMail(ctx) {
  const email = ctx.arg;
  return [
    heading("Check your mail"),
    h(
      "p",
      { id: "check-mail-text" },
      email ? ["We sent a verification link to ", h("strong", {}, email), "."] : "We sent you a verification link.",
      " Open it to verify your address, then log in.",
    ),
    devMailboxNote(),
    h("h2", {}, "No mail?"),
    resendForm(email),
  ];
}

/** "Mail lands in the dev mailbox", shown only where there is one. */
function devMailboxNote() {
  const note = h(
    "p",
    { id: "dev-mailbox-note", hidden: true },
    "This is a development platform: mail lands in the ",
    h("a", { href: "#/mailbox", id: "to-mailbox" }, "dev mailbox"),
    ".",
  );
  devMailbox.then((on) => {
    note.hidden = !on;
  });
  return note;
}

/** Ask for a new verification link. */
function resendForm(email = "") {
  const line = messageLine("resend-message");
  const form = h(
    "form",
    { id: "resend-form", novalidate: true },
    field({ form: "resend", name: "email", label: "Email", type: "email", autocomplete: "email", value: email }),
    h("button", { type: "submit", class: "secondary" }, "Send a new link"),
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(line, "");
    const address = form.elements.email.value.trim();
    try {
      await call("POST", "/api/verifications/resend", { body: { email: address } });
      say(line, `If ${address} is waiting for verification, a new link is on its way. Older links no longer work.`, "ok");
    } catch (error) {
      showError(line, error, form);
    }
  });
  return [form, line];
}

// --- Dev mailbox ------------------------------------------------------------------------------

/** The token in a mail's `…/<path>?token=<token>` link (`verify`, `reset` or `confirm-email`). */
function tokenIn(body, path = "verify") {
  const found = new RegExp(`/${path}\\?token=([A-Za-z0-9_.~%-]+)`).exec(body || "");
  return found ? decodeURIComponent(found[1]) : null;
}

/** `#/mailbox`: every mail the platform wrote to its embedded mailbox, newest first. */
export function mailbox(ctx) {
  const line = messageLine("mailbox-message");
  const list = h("ol", { id: "mailbox-list", class: "cards" });
  let shown = "";
  let timer = null;
  const load = async () => {
    clearTimeout(timer);
    try {
      const mails = await call("GET", "/api/dev/mailbox");
      const ids = mails.map((mail) => mail.id).join(",");
      if (ids !== shown) {
        shown = ids;
        setChildren(list, ...mails.map(mailCard));
      }
      say(line, mails.length ? "" : "No mail yet. Sign up, and your verification mail appears here.", "info");
    } catch (error) {
      if (error.status === 404) {
        setChildren(list);
        say(line, "This platform has no dev mailbox: mail goes to real inboxes. Look for your mail there.", "info");
        return; // nothing will appear: stop looking
      }
      showError(line, error);
    }
    // A click on Refresh may overlap a timed look: whichever ends last keeps the one timer.
    clearTimeout(timer);
    if (!ctx.signal.aborted) timer = setTimeout(load, MAILBOX_REFRESH_MS);
  };
  ctx.signal.addEventListener("abort", () => clearTimeout(timer));
  load();
  return [
    heading("Dev mailbox"),
    h(
      "p",
      {},
      "Mail the platform sent, newest first. It is kept here only when mail goes to the embedded mailbox; this list refreshes by itself.",
    ),
    refreshButton("mailbox-refresh", load),
    line,
    list,
  ];
}

function mailCard(mail) {
  const token = tokenIn(mail.body);
  const resetToken = tokenIn(mail.body, "reset");
  const emailToken = tokenIn(mail.body, "confirm-email");
  return h(
    "li",
    { class: "card mail" },
    h("h2", {}, mail.subject || "(no subject)"),
    h("p", { class: "meta" }, "To ", h("span", { class: "mail-to" }, mail.to), ` · ${formatDate(mail.sent_at)}`),
    token
      ? h("p", {}, h("a", { class: "button primary verify-link", href: `#/verify/${encodeURIComponent(token)}` }, "Open the verification link"))
      : null,
    resetToken
      ? h("p", {}, h("a", { class: "button primary reset-link", href: `#/reset/${encodeURIComponent(resetToken)}` }, "Open the password reset link"))
      : null,
    emailToken
      ? h("p", {}, h("a", { class: "button primary confirm-email-link", href: `#/confirm-email/${encodeURIComponent(emailToken)}` }, "Open the email change link"))
      : null,
    h("details", {}, h("summary", {}, "Show the message"), h("pre", { class: "mail-body" }, mail.body)),
  );
}

// --- Verify -----------------------------------------------------------------------------------

/** `#/verify/<token>` (and `/verify?token=…` from a mail): confirm the address. */
export function verify(ctx) {
  const token = ctx.arg;
  const line = messageLine("verify-message");
  const resend = h("section", { id: "verify-resend", hidden: true }, h("h2", {}, "Get a new link"), resendForm());
  if (!token) {
    say(line, "This link has no token in it. Copy the whole link from your mail, or ask for a new one.", "error");
    resend.hidden = false;
    return [heading("Verify your email address"), line, resend];
  }
  const button = h("button", { id: "verify-button", type: "button", class: "primary" }, "Verify my address");
  const next = h("p", { id: "verify-next", hidden: true }, h("a", { class: "button primary", href: "#/login" }, "Log in"));
  onClick(button, async () => {
    say(line, "");
    try {
      await call("POST", `/api/verifications/${encodeURIComponent(token)}`);
      say(line, "Your email address is verified. You can log in now.", "ok");
      button.hidden = true;
      next.hidden = false;
      resend.hidden = true;
    } catch (error) {
      showError(line, error);
      // A refused link (used, replaced or expired) will not work again: offer a new one.
      if (error.status >= 400 && error.status < 500 && error.status !== 429) {
        button.hidden = true;
        resend.hidden = false;
      }
    }
  });
  return [
    heading("Verify your email address"),
    h("p", {}, "Confirm that the address this link was sent to is yours."),
    button,
    line,
    next,
    resend,
  ];
}

// --- Log in -----------------------------------------------------------------------------------

/** `#/login`. */
export function login(ctx) {
  const line = messageLine("login-message");
  const form = h(
    "form",
    { id: "login-form", novalidate: true },
    field({ form: "login", name: "email", label: "Email", type: "email", autocomplete: "username" }),
    field({ form: "login", name: "password", label: "Password", type: "password", autocomplete: "current-password" }),
    h("button", { type: "submit", class: "primary" }, "Log in"),
  );
  const help = h("p", { id: "login-help", hidden: true });
  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(line, "");
    help.hidden = true;
    const email = form.elements.email.value.trim();
    try {
      const answer = await call("POST", "/api/sessions", {
        body: { email, password: form.elements.password.value },
      });
      session.save(answer.access_token);
      ctx.go("me");
    } catch (error) {
      showError(line, error, form);
      if (error.status === 403) {
        setChildren(
          help,
          "Open the link in your verification mail first. ",
          h("a", { href: `#/check-mail/${encodeURIComponent(email)}` }, "Need a new link?"),
        );
        help.hidden = false;
      }
    }
  });
  return [
    heading("Log in"),
    form,
    line,
    help,
    h("p", {}, h("a", { id: "forgot-link", href: "#/forgot" }, "Forgot your password?")),
    h("p", {}, "New here? ", h("a", { href: "#/signup" }, "Create an account"), "."),
  ];
}

// --- Password reset ---------------------------------------------------------------------------

/** `#/forgot`: ask for a password reset link. The answer is the same for any address. */
export function forgot(ctx) {
  const line = messageLine("forgot-message");
  const form = h(
    "form",
    { id: "forgot-form", novalidate: true },
    field({ form: "forgot", name: "email", label: "Email", type: "email", autocomplete: "email" }),
    h("button", { type: "submit", class: "primary" }, "Send me a reset link"),
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(line, "");
    const address = form.elements.email.value.trim();
    try {
      await call("POST", "/api/password-resets", { body: { email: address } });
      say(
        line,
        `If an account exists for ${address}, a link to choose a new password is on its way. It works once, for an hour; asking again replaces it.`,
        "ok",
      );
    } catch (error) {
      showError(line, error, form);
    }
  });
  return [
    heading("Forgot your password?"),
    h("p", {}, "Give the email address of your account, and we mail you a link to choose a new password."),
    form,
    line,
    devMailboxNote(),
    h("p", {}, h("a", { href: "#/login" }, "Back to log in")),
  ];
}

/** `#/reset/<token>` (and `/reset?token=…` from a mail): choose a new password. */
export function reset(ctx) {
  const token = ctx.arg;
  const line = messageLine("reset-message");
  const again = h("p", { id: "reset-again", hidden: true }, h("a", { href: "#/forgot" }, "Ask for a new link"));
  if (!token) {
    say(line, "This link has no token in it. Copy the whole link from your mail, or ask for a new one.", "error");
    again.hidden = false;
    return [heading("Choose a new password"), line, again];
  }
  const form = h(
    "form",
    { id: "reset-form", novalidate: true },
    field({
      form: "reset",
      name: "password",
      label: "New password",
      type: "password",
      autocomplete: "new-password",
      hint: "8 to 256 characters, hard to guess: a few unrelated words work well.",
    }),
    h("button", { type: "submit", class: "primary" }, "Set my new password"),
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(line, "");
    again.hidden = true;
    try {
      await call("POST", `/api/password-resets/${encodeURIComponent(token)}`, {
        body: { password: form.elements.password.value },
      });
      session.clear();
      ctx.go("login", "Your password is changed and you were logged out everywhere. Log in with your new password.");
    } catch (error) {
      showError(line, error, form);
      // A refused link (used, replaced or expired) will not work again: offer a new one.
      if (error.status === 404) {
        form.hidden = true;
        again.hidden = false;
      }
    }
  });
  return [heading("Choose a new password"), form, line, again];
}

// --- Me ---------------------------------------------------------------------------------------

/** `#/me`: the aggregate profile, what could not be loaded, and the profile form. */
export function me(ctx) {
  const line = messageLine("me-message");
  const missing = h("p", { id: "me-missing", class: "message message-warning", role: "status", hidden: true });
  const profile = h("dl", { id: "profile", class: "profile" });
  const counts = h("p", { id: "me-counts" });
  const saved = messageLine("profile-message");
  const form = h(
    "form",
    { id: "profile-form", novalidate: true },
    field({ form: "profile", name: "display_name", label: "Display name", autocomplete: "nickname" }),
    field({ form: "profile", name: "interests", label: "Interests", hint: "Separated by commas." }),
    h("button", { type: "submit", class: "primary" }, "Save changes"),
  );
  form.hidden = true;

  const showProfile = (p) => {
    const interests = Array.isArray(p.interests) && p.interests.length ? p.interests.join(", ") : "none yet";
    setChildren(
      profile,
      h("dt", {}, "Display name"),
      h("dd", { id: "profile-display-name" }, p.display_name),
      h("dt", {}, "Email"),
      h("dd", { id: "profile-email" }, p.email),
      h("dt", {}, "Interests"),
      h("dd", { id: "profile-interests" }, interests),
      h("dt", {}, "Email address"),
      h(
        "dd",
        { id: "profile-verified", class: p.verified ? "badge badge-ok" : "badge badge-warning" },
        p.verified ? "Verified" : "Not verified yet: open the link in your verification mail",
      ),
    );
    form.elements.display_name.value = p.display_name || "";
    form.elements.interests.value = Array.isArray(p.interests) ? p.interests.join(", ") : "";
    form.hidden = false;
  };

  const load = async () => {
    say(line, "");
    try {
      const answer = await call("GET", "/api/me", { auth: true });
      if (answer.profile) showProfile(answer.profile);
      else setChildren(profile, h("dt", {}, "Profile"), h("dd", {}, "Could not be loaded."));
      const gone = answer.missing || [];
      missing.hidden = gone.length === 0;
      missing.textContent = gone.length
        ? `Some parts could not be loaded because ${gone.join(" and ")} did not answer in time: ${missingParts(gone)}. Refresh to try again.`
        : "";
      const friends = Array.isArray(answer.friends) ? answer.friends.length : null;
      const suggestions = Array.isArray(answer.suggestions) ? answer.suggestions.length : null;
      setChildren(
        counts,
        friends === null ? "Friends: not available. " : [h("a", { href: "#/friends" }, plural(friends, "friend")), ". "],
        suggestions === null
          ? "Suggestions: not available."
          : [h("a", { href: "#/suggestions" }, plural(suggestions, "suggestion")), "."],
      );
    } catch (error) {
      showError(line, error);
    }
  };

  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(saved, "");
    const body = {
      display_name: form.elements.display_name.value.trim(),
      interests: parseList(form.elements.interests.value),
    };
    try {
      const updated = await call("PATCH", "/api/me", { body, auth: true });
      showProfile(updated);
      say(saved, "Your profile is saved.", "ok");
    } catch (error) {
      showError(saved, error, form);
    }
  });

  load();
  return [
    heading("Your profile"),
    refreshButton("me-refresh", load),
    line,
    missing,
    profile,
    counts,
    h("h2", {}, "Edit your profile"),
    form,
    saved,
  ];
}

function missingParts(services) {
  const parts = [];
  if (services.includes("users")) parts.push("your profile");
  if (services.includes("friends")) parts.push("your friends and suggestions");
  for (const other of services.filter((s) => s !== "users" && s !== "friends")) parts.push(`data from ${other}`);
  return parts.join(", ");
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

// --- Suggestions ------------------------------------------------------------------------------

/** `#/suggestions`: people to befriend, with "add friend". */
export function suggestions(ctx) {
  const line = messageLine("suggestions-message");
  const list = h("ul", { id: "suggestions-list", class: "cards" });
  const load = async () => {
    say(line, "");
    try {
      const people = await call("GET", "/api/suggestions", { auth: true });
      setChildren(list, ...people.map((person) => suggestionCard(person, line)));
      if (!people.length) {
        say(line, "No suggestions yet. People who share your interests appear here once they have verified their address.", "info");
      }
    } catch (error) {
      showError(line, error);
    }
  };
  load();
  return [heading("People you may know"), refreshButton("suggestions-refresh", load), line, list];
}

function suggestionCard(person, line) {
  const shared = person.shared_interests || [];
  const outcome = h("p", { class: "outcome", role: "status" });
  const button = h(
    "button",
    { type: "button", class: "primary add-friend", "aria-label": `Add ${person.display_name} as a friend` },
    "Add friend",
  );
  onClick(button, async () => {
    say(line, "");
    try {
      const answer = await call("POST", `/api/friends/${encodeURIComponent(person.id)}`, { auth: true });
      button.hidden = true;
      outcome.textContent =
        answer && answer.status === "friends" ? `You and ${person.display_name} are now friends.` : "Friend request sent.";
    } catch (error) {
      showError(line, error);
    }
  });
  return h(
    "li",
    { class: "card person", "data-user-id": person.id },
    h("h2", { class: "person-name" }, person.display_name),
    h(
      "p",
      { class: "meta" },
      shared.length ? `Shared interests: ${shared.join(", ")}` : "No shared interests",
      ` · ${plural(person.mutual_friends || 0, "mutual friend")}`,
    ),
    button,
    outcome,
  );
}

// --- Friends ----------------------------------------------------------------------------------

/** `#/friends`: requests waiting for an answer, and the friend list. */
export function friends(ctx) {
  const line = messageLine("friends-message");
  const requests = h("ul", { id: "requests-list", class: "cards" });
  const noRequests = h("p", { id: "requests-empty", hidden: true }, "No requests waiting for you.");
  const list = h("ul", { id: "friends-list", class: "cards" });
  const noFriends = h(
    "p",
    { id: "friends-empty", hidden: true },
    "No friends yet. Find people in your ",
    h("a", { href: "#/suggestions" }, "suggestions"),
    ".",
  );
  const load = async () => {
    try {
      const [waiting, mine] = await Promise.all([
        call("GET", "/api/friends/requests", { auth: true }),
        call("GET", "/api/friends", { auth: true }),
      ]);
      setChildren(requests, ...waiting.map((request) => requestCard(request, line, load)));
      noRequests.hidden = waiting.length > 0;
      setChildren(list, ...mine.map((friend) => friendCard(friend, line, load)));
      noFriends.hidden = mine.length > 0;
    } catch (error) {
      showError(line, error);
    }
  };
  load();
  return [
    heading("Friends"),
    refreshButton("friends-refresh", load),
    line,
    h("h2", {}, "Friend requests"),
    noRequests,
    requests,
    h("h2", {}, "Your friends"),
    noFriends,
    list,
  ];
}

function requestCard(request, line, reload) {
  const button = h(
    "button",
    { type: "button", class: "primary accept", "aria-label": `Accept ${request.display_name}'s request` },
    "Accept",
  );
  onClick(button, async () => {
    say(line, "");
    try {
      await call("POST", `/api/friends/${encodeURIComponent(request.id)}/accept`, { auth: true });
      say(line, `You and ${request.display_name} are now friends.`, "ok");
      await reload();
    } catch (error) {
      showError(line, error);
    }
  });
  return h(
    "li",
    { class: "card person", "data-user-id": request.id },
    h("h3", { class: "person-name" }, request.display_name),
    h("p", { class: "meta" }, `Asked ${formatDate(request.since)}`),
    button,
  );
}

function friendCard(friend, line, reload) {
  const button = h(
    "button",
    { type: "button", class: "danger remove", "aria-label": `Remove ${friend.display_name} from your friends` },
    "Remove",
  );
  // Two steps, so one stray tap does not end a friendship.
  let armed = false;
  onClick(button, async () => {
    if (!armed) {
      armed = true;
      button.textContent = "Click again to remove";
      return;
    }
    say(line, "");
    try {
      await call("DELETE", `/api/friends/${encodeURIComponent(friend.id)}`, { auth: true });
      say(line, `${friend.display_name} is no longer your friend.`, "ok");
      await reload();
    } catch (error) {
      showError(line, error);
    }
  });
  return h(
    "li",
    { class: "card person", "data-user-id": friend.id },
    h("h3", { class: "person-name" }, friend.display_name),
    h("p", { class: "meta" }, `Friends since ${formatDate(friend.since)}`),
    button,
  );
}

// --- Ops --------------------------------------------------------------------------------------

/**
 * `#/ops`: every service's readiness and the gateway's breaker for it, then each service's
 * figures over the last minutes as small charts.
 */
export function ops(ctx) {
  const line = messageLine("ops-message");
  const summary = h("p", { id: "ops-summary", role: "status" });
  const rows = h("tbody", { id: "ops-rows" });
  const charts = h("div", { id: "ops-charts", class: "charts" });
  // The charts load beside the table (a failure of theirs leaves it alone) and follow each new
  // sample while the page is shown.
  let timer = null;
  const loadCharts = async () => {
    clearTimeout(timer);
    let every = CHARTS_REFRESH_MS;
    try {
      const figures = await call("GET", "/ops/figures");
      setChildren(charts, figureCharts(figures));
      if (figures.interval_seconds > 0) every = Math.max(every, figures.interval_seconds * 1000);
    } catch (error) {
      setChildren(charts, h("p", { id: "ops-charts-error", class: "not-ready" }, `No figures: ${error.message}`));
    }
    clearTimeout(timer);
    if (!ctx.signal.aborted) timer = setTimeout(loadCharts, every);
  };
  ctx.signal.addEventListener("abort", () => clearTimeout(timer));
  const load = async () => {
    say(line, "");
    loadCharts();
    try {
      const status = await call("GET", "/ops/status");
      const services = Array.isArray(status.services) ? status.services : [];
      setChildren(rows, ...services.map(serviceRow));
      const down = services.filter((service) => !service.ready).length;
      summary.textContent =
        down === 0
          ? `All ${services.length} services are ready (checked ${new Date().toLocaleTimeString()}).`
          : `${down} of ${services.length} services are not ready (checked ${new Date().toLocaleTimeString()}).`;
      summary.className = down === 0 ? "message message-ok" : "message message-error";
    } catch (error) {
      showError(line, error);
    }
  };
  load();
  return [
    heading("Platform status"),
    refreshButton("ops-refresh", load),
    line,
    summary,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "ops-table" },
        h("caption", {}, "Each service's readiness, and the state of the gateway's circuit breaker towards it"),
        h(
          "thead",
          {},
          h("tr", {}, h("th", { scope: "col" }, "Service"), h("th", { scope: "col" }, "Ready"), h("th", { scope: "col" }, "Breaker")),
        ),
        rows,
      ),
    ),
    h("h2", {}, "The last minutes"),
    charts,
  ];
}

/** What the status page charts of each service, in order: the field of `/ops/figures`, its
 * title, how its latest value reads, and the least height of its chart's scale. */
const FIGURES = [
  { key: "requests_per_second", title: "Requests", text: (value) => `${value.toFixed(1)}/s`, floor: 1 },
  { key: "error_share", title: "Errors (5xx)", text: (value) => `${(value * 100).toFixed(1)} %`, floor: 0.05 },
  { key: "p99_seconds", title: "p99 latency", text: (value) => `${(value * 1000).toFixed(1)} ms`, floor: 0.01 },
  { key: "bus_backlog", title: "Bus backlog", text: (value) => `${Math.round(value)}`, floor: 1, bus: true },
  { key: "dead_letters", title: "Dead letters", text: (value) => `${Math.round(value)}`, floor: 1, bus: true },
];

/** The charts of every service in `/ops/figures`; a service without a bus has no bus charts. */
function figureCharts(figures) {
  const times = Array.isArray(figures.times) ? figures.times : [];
  const services = Array.isArray(figures.services) ? figures.services : [];
  if (times.length === 0) {
    const why = figures.interval_seconds > 0 ? "No figures yet: the first come a few seconds after the gateway starts." : "The gateway samples no figures (FIGURES_INTERVAL is off).";
    return h("p", { id: "ops-charts-empty", class: "meta" }, why);
  }
  // The charts span what the gateway has sampled (at least a minute), up to its ten minutes.
  const end = times[times.length - 1];
  const window = Math.min(600, Math.max(60, end - times[0]));
  const span = h(
    "p",
    { id: "ops-charts-span", class: "meta" },
    `Each chart spans the last ${Math.round(window / 60)} min, sampled every ${figures.interval_seconds} s; a gap is a time the service did not answer (or, for p99, served nothing).`,
  );
  return [span, services.map((service) => {
    const series = (key) => (Array.isArray(service[key]) ? service[key] : []);
    const answering = Number.isFinite(series("requests_per_second")[times.length - 1]);
    const shown = FIGURES.filter((figure) => !figure.bus || series(figure.key).some(Number.isFinite));
    return h(
      "section",
      { class: "card service-figures", "data-service": service.name },
      h("h3", {}, service.name),
      answering ? null : h("p", { class: "not-ready" }, "No figures now: it did not answer."),
      h(
        "div",
        { class: "chart-row" },
        shown.map((figure) => {
          const values = series(figure.key);
          const latest = values[values.length - 1];
          const latestText = Number.isFinite(latest) ? figure.text(latest) : "—";
          return h(
            "figure",
            { class: "chart", "data-figure": figure.key },
            h("figcaption", {}, figure.title, " ", h("span", { class: "chart-latest" }, latestText)),
            sparkline(
              times.map((at, index) => [at, values[index]]),
              { end, window, floor: figure.floor, label: `${service.name}: ${figure.title}, now ${latestText}` },
            ),
          );
        }),
      ),
    );
  })];
}

function serviceRow(service) {
  return h(
    "tr",
    { "data-service": service.name },
    h("th", { scope: "row" }, service.name),
    h("td", { class: service.ready ? "ready" : "not-ready" }, service.ready ? "ready" : "not ready"),
    h("td", {}, breakerText(service.breaker)),
  );
}

/** A breaker object, whatever its fields: its state first, then the rest that have a value. */
function breakerText(breaker) {
  if (!breaker || typeof breaker !== "object") return "—";
  const { state, ...rest } = breaker;
  const others = Object.entries(rest).filter(([, value]) => value !== null && value !== undefined).map(([name, value]) =>
    `${name.replaceAll("_", " ")}: ${typeof value === "object" && value !== null ? JSON.stringify(value) : value}`,
  );
  return [h("strong", { class: `breaker-${String(state || "unknown").replace(/[^a-z_-]/gi, "")}` }, state || "unknown"), others.length ? ` (${others.join(", ")})` : ""];
}

// --- Settings -------------------------------------------------------------------------------

/**
 * `#/settings`: change the password, change the email address, the sessions (where the
 * reader is logged in, and logging out everywhere), and deleting the account. Each section
 * is a function of its own.
 */
export function settings(ctx) {
  const sessionsPart = sessionsSection(ctx);
  return [
    heading("Settings"),
    ...changePasswordForm(sessionsPart.reload),
    ...changeEmailForm(),
    ...sessionsPart.elements,
    ...deleteAccountForm(ctx),
  ];
}

/** Where the reader is logged in, and logging out everywhere; `reload` lists them again. */
function sessionsSection(ctx) {
  const line = messageLine("sessions-message");
  const list = h("ul", { id: "sessions-list", class: "cards" });
  const reload = async () => {
    try {
      const mine = await call("GET", "/api/sessions", { auth: true });
      setChildren(list, ...mine.map(sessionCard));
    } catch (error) {
      showError(line, error);
    }
  };
  const everywhere = h("button", { id: "logout-everywhere", type: "button", class: "danger" }, "Log out everywhere");
  onClick(everywhere, async () => {
    say(line, "");
    try {
      await call("DELETE", "/api/sessions", { auth: true });
      session.clear();
      ctx.go("login", "You are logged out everywhere.");
    } catch (error) {
      showError(line, error);
    }
  });
  reload();
  return {
    reload,
    elements: [
      h("h2", {}, "Your sessions"),
      h("p", {}, "Each browser or app you logged in with. Logging out everywhere ends all of them."),
      refreshButton("sessions-refresh", reload),
      line,
      list,
      everywhere,
    ],
  };
}

/**
 * Change the email address (the password required). Nothing changes until the link mailed to
 * the new address is opened; the answer is the same whether or not the address is free.
 */
function changeEmailForm() {
  const line = messageLine("email-message");
  const form = h(
    "form",
    { id: "email-form", novalidate: true },
    field({ form: "email", name: "email", label: "New email address", type: "email", autocomplete: "email" }),
    field({ form: "email", name: "password", label: "Your password", type: "password", autocomplete: "current-password" }),
    h("button", { type: "submit", class: "primary" }, "Change my email address"),
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(line, "");
    const address = form.elements.email.value.trim();
    try {
      await call("POST", "/api/me/email", {
        auth: true,
        body: { email: address, password: form.elements.password.value },
      });
      form.reset();
      say(
        line,
        `Check the inbox of ${address}: open the link we mailed there to make it your address. Until then your address stays as it is.`,
        "ok",
      );
    } catch (error) {
      if (error.type === WRONG_PASSWORD) error.errors = { password: "is wrong", ...error.errors };
      showError(line, error, form);
    }
  });
  return [h("h2", {}, "Change your email address"), form, line];
}

/** `#/confirm-email/<token>` (and `/confirm-email?token=…` from a mail): take the new address. */
export function confirmEmail(ctx) {
  const token = ctx.arg;
  const line = messageLine("confirm-email-message");
  if (!token) {
    say(line, "This link has no token in it. Copy the whole link from your mail.", "error");
    return [heading("Confirm your new email address"), line];
  }
  const button = h("button", { id: "confirm-email-button", type: "button", class: "primary" }, "Use this address");
  const next = h("p", { id: "confirm-email-next", hidden: true }, h("a", { class: "button primary", href: "#/login" }, "Log in"));
  onClick(button, async () => {
    say(line, "");
    try {
      await call("POST", `/api/email-changes/${encodeURIComponent(token)}`);
      say(line, "Your email address is changed. Log in with it from now on.", "ok");
      button.hidden = true;
      next.hidden = Boolean(session.token());
    } catch (error) {
      showError(line, error);
      // A refused link (used, replaced, expired, or the address taken) will not work again.
      if (error.status >= 400 && error.status < 500 && error.status !== 429) button.hidden = true;
    }
  });
  return [
    heading("Confirm your new email address"),
    h("p", {}, "Make the address this link was sent to the one you log in with."),
    button,
    line,
    next,
  ];
}

/** Change the password (the current one required); the other sessions end, so `reload` the list. */
function changePasswordForm(reload) {
  const line = messageLine("password-message");
  const form = h(
    "form",
    { id: "password-form", novalidate: true },
    field({
      form: "password",
      name: "current_password",
      label: "Current password",
      type: "password",
      autocomplete: "current-password",
    }),
    field({
      form: "password",
      name: "new_password",
      label: "New password",
      type: "password",
      autocomplete: "new-password",
      hint: "8 to 256 characters, hard to guess. Your other sessions are logged out.",
    }),
    h("button", { type: "submit", class: "primary" }, "Change my password"),
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(line, "");
    try {
      await call("PUT", "/api/me/password", {
        auth: true,
        body: {
          current_password: form.elements.current_password.value,
          new_password: form.elements.new_password.value,
        },
      });
      form.reset();
      say(line, "Your password is changed. Your other sessions are logged out; this one goes on.", "ok");
      await reload();
    } catch (error) {
      if (error.type === WRONG_PASSWORD) error.errors = { current_password: "is wrong", ...error.errors };
      showError(line, error, form);
    }
  });
  return [h("h2", {}, "Change your password"), form, line];
}

/** Delete the account for good: the password and a ticked confirmation, then logged out. */
function deleteAccountForm(ctx) {
  const line = messageLine("delete-account-message");
  const confirm = h("input", { id: "delete-account-confirm", name: "confirm", type: "checkbox" });
  const form = h(
    "form",
    { id: "delete-account-form", novalidate: true },
    field({
      form: "delete-account",
      name: "password",
      label: "Password",
      type: "password",
      autocomplete: "current-password",
    }),
    h(
      "label",
      { class: "check", for: "delete-account-confirm" },
      confirm,
      "I understand: my profile, friends and mail are erased, and this cannot be undone.",
    ),
    h("button", { type: "submit", class: "danger" }, "Delete my account"),
  );
  onSubmit(form, async () => {
    clearFieldErrors(form);
    say(line, "");
    if (!confirm.checked) {
      say(line, "Tick the box to confirm that you want your account deleted.", "error");
      return;
    }
    try {
      await call("DELETE", "/api/me", { auth: true, body: { password: form.elements.password.value } });
      session.clear();
      ctx.go("login", "Your account is deleted and you are logged out. Goodbye.");
    } catch (error) {
      if (error.type === WRONG_PASSWORD) error.errors = { password: "is wrong", ...error.errors };
      showError(line, error, form);
    }
  });
  return [h("h2", {}, "Delete your account"), form, line];
}

function sessionCard(entry) {
  return h(
    "li",
    { class: "card", "data-session-id": entry.id, "data-current": String(entry.current) },
    h("h3", {}, entry.user_agent || "Unknown browser or app", entry.current ? " (this browser)" : ""),
    h(
      "p",
      { class: "meta" },
      `From ${entry.client_address}; logged in ${formatDate(entry.created_at)}, last used ${formatDate(entry.last_used_at)}`,
    ),
  );
}
