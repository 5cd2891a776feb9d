// The chat page: login, the conversation, the usage meter, the notices around them, and buying
// plans and packs (Checkout, the billing portal and the way back from them).

import { ApiError, ErrorKind, createBackend, loadConfig, newRequestId } from "./api.js";
import { LEVELS, cannotChat, currentAlert, levelOf, limitKind } from "./format.js";
import {
  clearConversation,
  forgetCheckout,
  loadConversation,
  loadDismissed,
  pendingCheckout,
  rememberCheckout,
  saveConversation,
  saveDismissed,
} from "./storage.js";
import { byTestId, renderConversation, renderNotices, renderOffer, renderUsage } from "./view.js";

// Back from Checkout the payment's events may still be on their way to the webhook: the meter is
// read again after each of these pauses (about 20 s in all) before the page says it is late.
const CONFIRM_DELAYS_MS = [0, 1000, 1500, 2000, 2500, 3000, 4000, 5000];

const state = {
  config: null,
  backend: null,
  user: null,
  messages: [],
  usage: null,
  // False until the first usage reading is in (or failed): the box waits for it, so that a plan
  // that cannot chat never shows one.
  usageRead: false,
  // Set when the usage says the limit is reached or a 429 says the allowance is spent: input
  // stays off until a usage reading shows a new allowance or a new period.
  blocked: false,
  spent: null, // { limit, used } of the 429 that said the allowance is spent
  tooLong: null, // the usage of a 429 that refused one request too big for what is left
  catalog: { status: "idle", plans: [], topups: [], forPlan: null, error: "" },
  offerOpen: false, // the offer asked for from a usage warning
  buying: null, // "plan:<id>", "topup:<id>" or "portal" while the page gets its address
  billingError: null,
  checkout: null, // { phase: confirming|confirmed|slow|returned|cancelled, purchase, usage }
  dismissed: new Set(), // ids of threshold alerts the user dismissed
  // Each send takes the next generation; an answer whose generation is no longer current was
  // abandoned (Stop, logout) and is ignored.
  generation: 0,
  pending: null, // { generation, text, requestId } while a reply is awaited
  // The last message that did not get a reply. Sending the same text again reuses its request
  // id, so a request that did run on the server is answered from its record and charged once.
  unsent: null,
  error: null, // { title, text, retryable, newChat }
  status: "",
  authMode: "login",
};

const input = () => byTestId("message-input");

function show(view) {
  byTestId("page-status").hidden = view !== "loading" && view !== "fatal";
  byTestId("auth-view").hidden = view !== "auth";
  byTestId("chat-view").hidden = view !== "chat";
  byTestId("account-actions").hidden = view !== "chat";
  if (view !== "chat") byTestId("usage-meter").hidden = true;
  document.body.dataset.view = view;
}

function isDemo() {
  return state.usage !== null && cannotChat(state.usage, state.config.minChatTokens);
}

function offerMode() {
  if (state.usage === null) return null;
  if (isDemo()) return "demo";
  if (state.blocked) return "limit";
  return state.offerOpen ? "browse" : null;
}

function renderChat() {
  const demo = isDemo();
  const mode = offerMode();
  if (mode !== null) ensureCatalog();
  renderConversation(
    byTestId("conversation"),
    state.messages,
    state.pending?.text ?? null,
    state.blocked || demo,
  );
  // A plan that cannot chat gets the plans instead of a conversation and a box that can only fail.
  byTestId("conversation").hidden = demo;
  byTestId("composer").hidden = demo || !state.usageRead;
  byTestId("chat-view").dataset.offer = mode ?? "";
  byTestId("billing-button").hidden = !hasStripePlan();
  byTestId("new-chat").hidden = demo;
  renderUsage(state.usage);
  renderNotices({
    usage: state.usage,
    blocked: state.blocked,
    demo,
    tooLong: state.tooLong,
    checkout: state.checkout,
    billingError: state.billingError,
    alert: currentAlert(state.usage, state.dismissed),
    error: state.error,
    status: state.status,
    hasMessages: state.messages.length > 0,
    onRetry: retry,
    onNewChat: newChat,
    onDismissAlert: dismissAlert,
    onShowOffer: () => {
      state.offerOpen = true;
      renderChat();
      // The offer's region takes focus: its title is read, and Tab goes on to its buttons.
      byTestId("offer").focus();
    },
    onDismissCheckout: () => {
      state.checkout = null;
      renderChat();
    },
    onCheckAgain: () => void confirmCheckout(state.checkout?.purchase ?? null),
    onDismissBillingError: () => {
      state.billingError = null;
      renderChat();
    },
  });
  renderOffer({
    mode,
    usage: state.usage,
    catalog: state.catalog,
    busy: state.buying,
    handlers: {
      onPlan: (plan) => void buy("plan", plan),
      onTopup: (pack) => void buy("topup", pack),
      onPortal: () => void openPortal(),
      onRetryPlans: () => {
        state.catalog = { ...state.catalog, status: "idle" };
        renderChat();
      },
      onClose: () => {
        state.offerOpen = false;
        renderChat();
      },
    },
  });
  renderComposer();
  const list = byTestId("conversation");
  list.scrollTop = list.scrollHeight;
}

// Plans bought through Stripe have a customer to manage; Demo has none.
function hasStripePlan() {
  return Boolean(state.usage?.plan) && state.usage.plan !== "demo";
}

function renderComposer() {
  const busy = state.pending !== null;
  const textarea = input();
  textarea.disabled = state.blocked;
  textarea.placeholder = state.blocked
    ? "Chat is paused: the monthly token limit is reached"
    : "Message the assistant…";
  byTestId("send-button").disabled = state.blocked || busy;
  byTestId("stop-button").hidden = !busy;
  byTestId("composer-hint").hidden = state.blocked;
  byTestId("composer").setAttribute("aria-busy", busy ? "true" : "false");
  autosize();
}

function autosize() {
  const textarea = input();
  textarea.style.height = "auto";
  textarea.style.height = `${Math.min(textarea.scrollHeight, 200)}px`;
}

function applyUsage(usage) {
  if (!usage?.tokens) return;
  const { limit, used } = usage.tokens;
  // A refusal stands while the allowance is the same and the period has not started afresh.
  if (state.spent !== null && (limit > state.spent.limit || used < state.spent.used)) {
    state.spent = null;
  }
  if (state.tooLong !== null && limit !== state.tooLong.tokens.limit) state.tooLong = null;
  if (state.catalog.status !== "idle" && state.catalog.forPlan !== usage.plan) {
    // The current plan decides which plans are an upgrade: ask again after a change.
    state.catalog = { ...state.catalog, status: "idle" };
  }
  // Chat replies carry no alerts (only the usage answer reads them): keep the last ones known.
  state.usage =
    usage.notices === undefined && state.usage?.notices
      ? { ...usage, notices: state.usage.notices }
      : usage;
  state.blocked = levelOf(usage) === "exceeded" || state.spent !== null;
  if (state.blocked) state.offerOpen = false;
}

// -- auth ----------------------------------------------------------------------------------------

function renderAuth(message = "") {
  const signup = state.authMode === "signup";
  byTestId("auth-title").textContent = signup ? "Create your account" : "Log in";
  byTestId("auth-submit").textContent = signup ? "Create account" : "Log in";
  byTestId("auth-switch-text").textContent = signup
    ? "Already have an account?"
    : "No account yet?";
  byTestId("auth-toggle").textContent = signup ? "Log in" : "Create one";
  byTestId("auth-name-field").hidden = !signup;
  byTestId("auth-password-hint").hidden = !signup;
  byTestId("auth-password").autocomplete = signup ? "new-password" : "current-password";
  const error = byTestId("auth-error");
  error.textContent = message;
  error.hidden = !message;
}

function showAuth(message = "") {
  show("auth");
  renderAuth(message);
  byTestId("auth-email").focus();
}

async function submitAuth(event) {
  event.preventDefault();
  const email = byTestId("auth-email").value.trim();
  const password = byTestId("auth-password").value;
  const name = byTestId("auth-name").value.trim();
  if (!email || !password) {
    renderAuth("Enter your email and password.");
    return;
  }
  if (state.authMode === "signup" && password.length < 8) {
    renderAuth("Choose a password of at least 8 characters.");
    return;
  }
  const submit = byTestId("auth-submit");
  submit.disabled = true;
  try {
    if (state.authMode === "signup") await state.backend.signUp(email, password, name);
    await state.backend.logIn(email, password);
    const user = await state.backend.currentUser();
    byTestId("auth-password").value = "";
    await enterChat(user);
  } catch (error) {
    renderAuth(authMessage(error));
  } finally {
    submit.disabled = false;
  }
}

function authMessage(error) {
  if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
  if (error.kind === ErrorKind.RETRYABLE) return error.message;
  if (error.status === 409) return "An account with this email already exists. Log in instead.";
  if (error.status === 401) return "Wrong email or password.";
  return error.message;
}

function toggleAuthMode() {
  state.authMode = state.authMode === "login" ? "signup" : "login";
  renderAuth();
  byTestId(state.authMode === "signup" ? "auth-name" : "auth-email").focus();
}

async function logOut() {
  state.generation += 1;
  state.pending = null;
  try {
    await state.backend.logOut();
  } catch {
    // The session may already be gone; the page forgets it either way.
  }
  leaveChat();
  showAuth();
}

function leaveChat() {
  Object.assign(state, {
    user: null,
    messages: [],
    usage: null,
    usageRead: false,
    blocked: false,
    spent: null,
    tooLong: null,
    catalog: { status: "idle", plans: [], topups: [], forPlan: null, error: "" },
    offerOpen: false,
    buying: null,
    billingError: null,
    checkout: null,
    dismissed: new Set(),
    pending: null,
    unsent: null,
    error: null,
    status: "",
  });
  input().value = "";
}

// -- chat ----------------------------------------------------------------------------------------

async function enterChat(user) {
  state.user = user;
  state.messages = loadConversation(user.$id);
  state.dismissed = loadDismissed(user.$id);
  byTestId("user-email").textContent = user.email ?? "";
  show("chat");
  renderChat();
  input().focus();
  const returned = new URLSearchParams(window.location.search).get("checkout");
  const pending = pendingCheckout(user.$id);
  // The message the user was writing when they left to pay is waiting in the box.
  if (typeof pending?.draft === "string" && !input().value.trim()) input().value = pending.draft;
  if (returned === "success") {
    await confirmCheckout(pending);
  } else if (returned === "cancel") {
    forgetCheckout();
    state.checkout = { phase: "cancelled", purchase: pending };
    clearCheckoutQuery();
    await refreshUsage();
  } else if (pending !== null) {
    // Back from the billing portal (where a subscriber's plan change goes too), or from a
    // Checkout left with the browser's Back button: a change reaches the meter through the
    // webhook, so the meter is read again for a while.
    await refreshUsage();
    void followChange(pending);
  } else {
    await refreshUsage();
  }
  if (!state.blocked && !isDemo() && state.user !== null) input().focus();
}

async function refreshUsage() {
  const generation = state.generation;
  try {
    const usage = await state.backend.usage();
    if (state.user === null) return;
    applyUsage(usage);
  } catch (error) {
    if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
      sessionEnded();
      return;
    }
    // The meter is informative; the chat works without it and the next reply refreshes it.
    if (generation === state.generation) state.status = "Couldn't load your usage just now.";
  }
  state.usageRead = true;
  renderChat();
}

// -- buying -------------------------------------------------------------------------------------

async function ensureCatalog() {
  if (state.catalog.status !== "idle" || state.backend === null) return;
  const forPlan = state.usage?.plan ?? null;
  state.catalog = { ...state.catalog, status: "loading", forPlan };
  try {
    const answer = await state.backend.plans();
    if (state.user === null) return;
    state.catalog = {
      status: "ready",
      plans: Array.isArray(answer?.plans) ? answer.plans.filter(validItem) : [],
      topups: Array.isArray(answer?.topups) ? answer.topups.filter(validItem) : [],
      forPlan,
      error: "",
    };
  } catch (error) {
    if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
      sessionEnded();
      return;
    }
    const text = error instanceof ApiError ? error.message : "The plans could not be loaded.";
    state.catalog = { ...state.catalog, status: "failed", forPlan, error: text };
  }
  renderChat();
}

function validItem(item) {
  return (
    typeof item?.id === "string" && typeof item?.name === "string" && Number.isFinite(item?.tokens)
  );
}

function snapshot() {
  const tokens = state.usage?.tokens ?? {};
  return {
    plan: state.usage?.plan ?? null,
    limit: tokens.limit ?? 0,
    topupTokens: tokens.topupTokens ?? 0,
  };
}

async function buy(kind, item) {
  if (state.buying !== null || state.user === null) return;
  state.buying = `${kind}:${item.id}`;
  state.billingError = null;
  renderChat();
  try {
    const url = await state.backend.checkout(
      kind === "plan" ? { plan: item.id } : { topup: item.id },
    );
    rememberCheckout({
      userId: state.user.$id,
      kind,
      id: item.id,
      name: item.name,
      tokens: item.tokens,
      before: snapshot(),
      draft: input().value,
    });
    // The buttons stay busy while the browser leaves for Checkout.
    window.location.assign(url);
  } catch (error) {
    billingFailed(error);
  }
}

async function openPortal() {
  if (state.buying !== null || state.user === null) return;
  state.buying = "portal";
  state.billingError = null;
  renderChat();
  try {
    const url = await state.backend.portal();
    rememberCheckout({
      userId: state.user.$id,
      kind: "portal",
      before: snapshot(),
      draft: input().value,
    });
    window.location.assign(url);
  } catch (error) {
    billingFailed(error);
  }
}

function billingFailed(error) {
  state.buying = null;
  if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
    sessionEnded();
    return;
  }
  state.billingError = error instanceof ApiError ? error.message : "Something went wrong.";
  renderChat();
  byTestId("billing-error-dismiss")?.focus();
}

function applied(purchase, usage) {
  const tokens = usage?.tokens ?? {};
  const before = purchase.before ?? {};
  if (purchase.kind === "plan") return usage.plan === purchase.id;
  if (purchase.kind === "topup") {
    return tokens.topupTokens > before.topupTokens || tokens.limit > before.limit;
  }
  return usage.plan !== before.plan || tokens.limit !== before.limit;
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Reads the usage after each pause until `done(usage)`; false when the tries ran out or the
// user left meanwhile.
async function pollUsage(done) {
  const user = state.user;
  for (const delay of CONFIRM_DELAYS_MS) {
    await pause(delay);
    if (state.user !== user) return false;
    let usage;
    try {
      usage = await state.backend.usage();
    } catch (error) {
      if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
        sessionEnded();
        return false;
      }
      continue;
    }
    if (state.user !== user) return false;
    applyUsage(usage);
    state.usageRead = true;
    renderChat();
    if (done(usage)) return true;
  }
  return false;
}

async function confirmCheckout(purchase) {
  state.checkout = { phase: "confirming", purchase };
  renderChat();
  if (purchase === null || !purchase.kind || purchase.kind === "portal") {
    // Paid in another tab or browser: nothing to compare with, so one fresh reading.
    await refreshUsage();
    if (state.user === null) return;
    state.checkout = { phase: "returned", purchase: null };
  } else {
    const confirmed = await pollUsage((usage) => applied(purchase, usage));
    if (state.user === null) return;
    // The figures of the moment of confirmation: the notice stays while the usage moves on.
    state.checkout = { phase: confirmed ? "confirmed" : "slow", purchase, usage: state.usage };
    if (confirmed) forgetCheckout();
  }
  clearCheckoutQuery();
  renderChat();
  if (!state.blocked && !isDemo()) input().focus();
}

async function followChange(pending) {
  // Silent unless something was bought: the user may have only looked at an invoice.
  const changed = await pollUsage((usage) => applied(pending, usage));
  forgetCheckout();
  if (changed && pending.kind !== "portal" && state.user !== null) {
    state.checkout = { phase: "confirmed", purchase: pending, usage: state.usage };
    renderChat();
  }
}

// The query Checkout came back with has been handled: a reload must not handle it again.
function clearCheckoutQuery() {
  const url = new URL(window.location.href);
  if (!url.searchParams.has("checkout")) return;
  url.searchParams.delete("checkout");
  url.searchParams.delete("session_id");
  window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
}

function dismissAlert(id) {
  if (state.user === null) return;
  state.dismissed.add(String(id));
  saveDismissed(state.user.$id, state.dismissed);
  renderChat();
  input().focus();
}

function sessionEnded() {
  state.generation += 1;
  leaveChat();
  showAuth("Your session has ended. Please log in again.");
}

function send() {
  const text = input().value.trim();
  if (!text || state.blocked || isDemo() || state.pending !== null || state.user === null) return;
  const requestId = state.unsent?.text === text ? state.unsent.requestId : newRequestId();
  state.generation += 1;
  state.pending = { generation: state.generation, text, requestId };
  state.unsent = null;
  state.error = null;
  state.tooLong = null;
  // News of a purchase is old once the user chats again.
  state.checkout = null;
  state.status = "";
  input().value = "";
  renderChat();
  void exchange(state.pending);
}

// What the model sees: the most recent messages (the chat function caps their number), starting
// with a user message as the API requires, without replies that came back empty.
function historyFor(text) {
  const limit = Math.max(1, state.config.historyMessages);
  const usable = state.messages.filter((m) => m.content.trim() !== "");
  const recent = usable.slice(-(limit - 1)).map(({ role, content }) => ({ role, content }));
  while (recent.length && recent[0].role !== "user") recent.shift();
  recent.push({ role: "user", content: text });
  return recent;
}

async function exchange(pending) {
  const history = historyFor(pending.text);
  try {
    const reply = await state.backend.chat(history, pending.requestId);
    if (pending.generation !== state.generation) return;
    state.pending = null;
    state.messages.push(
      { role: "user", content: pending.text },
      {
        role: "assistant",
        content: String(reply?.message?.content ?? ""),
        usage: reply?.message?.usage ?? null,
        truncated: reply?.message?.truncated === true,
        model: reply?.message?.model ?? "",
      },
    );
    saveConversation(state.user.$id, state.messages);
    const before = levelOf(state.usage);
    applyUsage(reply?.usage);
    renderChat();
    if (!state.blocked) input().focus();
    // A reply that crossed a threshold raised its alert: the usage answer brings it.
    if (LEVELS.indexOf(levelOf(state.usage)) > LEVELS.indexOf(before)) void refreshUsage();
  } catch (error) {
    if (pending.generation !== state.generation) return;
    failed(pending, error);
  }
}

function failed(pending, error) {
  state.pending = null;
  if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
    sessionEnded();
    return;
  }
  // Whatever went wrong, the typed message goes back into the box.
  restoreText(pending);
  if (error instanceof ApiError && error.kind === ErrorKind.LIMIT) {
    const usage = error.usage?.tokens ? error.usage : state.usage;
    const sent = historyFor(pending.text).reduce((sum, message) => sum + message.content.length, 0);
    state.error = null;
    const kind = limitKind(usage, sent, state.config.minChatTokens, error.details);
    if (usage?.tokens && kind === "too_long") {
      // A shorter message still fits: the box stays on with the text in it to shorten.
      state.tooLong = usage;
      applyUsage(usage);
    } else {
      state.spent = { limit: usage?.tokens?.limit ?? 0, used: usage?.tokens?.used ?? 0 };
      applyUsage(usage);
      state.blocked = true;
    }
  } else if (error instanceof ApiError && error.kind === ErrorKind.TOO_LARGE) {
    state.error = { title: "Conversation too long", text: error.message, newChat: true };
  } else if (error instanceof ApiError && error.kind === ErrorKind.INVALID) {
    state.error = { title: "Message not sent", text: error.message, retryable: false };
  } else {
    const text = error instanceof ApiError ? error.message : "Something went wrong.";
    state.error = {
      title: "Message not sent",
      text: `${text} Your message is still in the box.`,
      retryable: true,
    };
  }
  renderChat();
  if (!state.blocked) input().focus();
}

function restoreText(pending) {
  state.unsent = { text: pending.text, requestId: pending.requestId };
  const textarea = input();
  // Never overwrite what the user typed meanwhile.
  if (!textarea.value.trim()) textarea.value = pending.text;
}

function stop() {
  const pending = state.pending;
  if (pending === null) return;
  state.generation += 1;
  state.pending = null;
  restoreText(pending);
  state.status = "Stopped. Your message is back in the box.";
  renderChat();
  input().focus();
}

function retry() {
  const textarea = input();
  if (!textarea.value.trim() && state.unsent) textarea.value = state.unsent.text;
  send();
}

function newChat() {
  if (state.user === null) return;
  state.generation += 1;
  state.pending = null;
  state.messages = [];
  state.unsent = null;
  state.error = null;
  state.tooLong = null;
  state.status = "";
  clearConversation(state.user.$id);
  renderChat();
  input().focus();
}

function onKeydown(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
}

// -- start ---------------------------------------------------------------------------------------

function wire() {
  byTestId("auth-form").addEventListener("submit", submitAuth);
  byTestId("auth-toggle").addEventListener("click", toggleAuthMode);
  byTestId("logout").addEventListener("click", logOut);
  byTestId("new-chat").addEventListener("click", newChat);
  byTestId("billing-button").addEventListener("click", () => void openPortal());
  byTestId("stop-button").addEventListener("click", stop);
  byTestId("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input().addEventListener("keydown", onKeydown);
  // Back from Checkout with the browser's Back button, the page may come from the back-forward
  // cache with its buttons still busy.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && state.buying !== null) {
      state.buying = null;
      renderChat();
    }
  });
  input().addEventListener("input", autosize);
}

async function start() {
  wire();
  let config;
  try {
    config = await loadConfig();
  } catch {
    show("fatal");
    byTestId("page-status").textContent =
      "This page is not configured yet: config.json is missing or invalid. See web/README.md.";
    byTestId("page-status").setAttribute("role", "alert");
    return;
  }
  byTestId("offline-badge").hidden = !config.offlineModel;
  state.config = config;
  state.backend = createBackend(config);
  try {
    await enterChat(await state.backend.currentUser());
  } catch (error) {
    if (error instanceof ApiError && error.kind === ErrorKind.RETRYABLE) {
      showAuth(error.message);
    } else {
      showAuth();
    }
  }
}

void start();
