// The UI's entry: hash routes (#/signup, #/me, …) mapped to views, the navigation bar, and a
// one-time message carried across a route change. The verification mail links to
// /verify?token=…, the password reset mail to /reset?token=… and the email change mail to
// /confirm-email?token=…, which the gateway serves as this page; they become
// #/verify/<token>, #/reset/<token> and #/confirm-email/<token> here.

import { devMailbox, logOut, resume, session } from "./api.js";
import { h, say, setChildren } from "./dom.js";
import * as views from "./views.js";

/** Each route: its view, its title, and whether it needs a logged-in reader. */
const ROUTES = {
  signup: { view: views.signup, title: "Sign up", auth: false },
  "check-mail": { view: views.checkMail, title: "Check your mail", auth: false },
  mailbox: { view: views.mailbox, title: "Dev mailbox", auth: false },
  verify: { view: views.verify, title: "Verify your address", auth: false },
  login: { view: views.login, title: "Log in", auth: false },
  forgot: { view: views.forgot, title: "Forgot your password?", auth: false },
  reset: { view: views.reset, title: "Choose a new password", auth: false },
  me: { view: views.me, title: "Your profile", auth: true },
  suggestions: { view: views.suggestions, title: "Suggestions", auth: true },
  friends: { view: views.friends, title: "Friends", auth: true },
  settings: { view: views.settings, title: "Settings", auth: true },
  "confirm-email": { view: views.confirmEmail, title: "Confirm your new email address", auth: false },
  ops: { view: views.ops, title: "Platform status", auth: false },
};

const main = document.getElementById("view");
const nav = document.getElementById("nav");
let flash = null;
let leaving = null;
/** Whether the navigation shows the dev mailbox: only once the gateway said it has one. */
let showMailbox = false;

/** Move to `route` (e.g. "me"), showing `message` once on arrival. */
function go(route, message = null) {
  flash = message;
  const hash = `#/${route}`;
  if (location.hash === hash) render();
  else location.hash = hash;
}

function current() {
  const path = location.hash.replace(/^#\/?/, "");
  const slash = path.indexOf("/");
  const name = slash < 0 ? path : path.slice(0, slash);
  const arg = slash < 0 ? "" : decodeURIComponent(path.slice(slash + 1));
  return { name, arg };
}

function render() {
  if (leaving) leaving.abort();
  leaving = new AbortController();
  let { name, arg } = current();
  if (!ROUTES[name]) {
    name = session.token() ? "me" : "signup";
    history.replaceState(null, "", `#/${name}`);
    arg = "";
  }
  const route = ROUTES[name];
  if (route.auth && !session.token()) {
    go("login", "Log in to see this page.");
    return;
  }
  const notice = h("p", { id: "flash", hidden: true });
  if (flash) say(notice, flash, "info");
  flash = null;
  setChildren(main, notice, route.view({ arg, signal: leaving.signal, go }));
  document.title = `${route.title} · dozen`;
  renderNav(name);
  const title = main.querySelector("h1");
  if (title && document.activeElement !== document.body) title.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

function renderNav(active) {
  const link = (route, label) =>
    h("li", {}, h("a", { href: `#/${route}`, "aria-current": route === active ? "page" : null }, label));
  const loggedIn = Boolean(session.token());
  const logout = h("button", { type: "button", id: "logout", class: "link" }, "Log out");
  logout.addEventListener("click", async () => {
    await logOut();
    go("login", "You are logged out.");
  });
  setChildren(
    nav,
    ...(loggedIn
      ? [link("me", "Me"), link("suggestions", "Suggestions"), link("friends", "Friends"), link("settings", "Settings")]
      : [link("signup", "Sign up"), link("login", "Log in")]),
    ...(showMailbox ? [link("mailbox", "Mailbox")] : []),
    link("ops", "Status"),
    ...(loggedIn ? [h("li", {}, logout)] : []),
  );
}

// /verify?token=…, /reset?token=… and /confirm-email?token=… (the links in mails) →
// #/verify/<token>, #/reset/<token> and #/confirm-email/<token>, one route scheme for everything.
for (const linked of ["verify", "reset", "confirm-email"]) {
  if (location.pathname === `/${linked}`) {
    const token = new URLSearchParams(location.search).get("token") || "";
    history.replaceState(null, "", `/#/${linked}/${encodeURIComponent(token)}`);
  }
}

// The skip link moves focus without touching the hash, which holds the route.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", render);
window.addEventListener("dozen:session-ended", () => {
  if (ROUTES[current().name]?.auth) go("login", "Your session has ended. Log in again.");
  else renderNav(current().name);
});
// A reload keeps you logged in: the refresh cookie gives this tab a new access token.
if (!session.token()) await resume();
render();
devMailbox.then((on) => {
  showMailbox = on;
  nav.dataset.devMailbox = String(on); // what the page learned, for anyone looking
  renderNav(current().name);
});
