// The chat page: login, the conversation and its streamed turns, the usage meter, the notices
// around them, and buying plans and packs (Checkout, the billing portal and the way back).

import {
  ApiError,
  ErrorKind,
  createBackend,
  errorOf,
  loadConfig,
  newRequestId,
  outcomeOf,
} from "./api.js";
import {
  LEVELS,
  cannotChat,
  conversationTokens,
  currentAlert,
  formatTokens,
  levelOf,
  limitKind,
} from "./format.js";
import { copyText } from "./markdown.js";
import {
  clearConversation,
  forgetCheckout,
  forgetUser,
  loadConversation,
  loadDismissed,
  pendingCheckout,
  rememberCheckout,
  saveConversation,
  saveDismissed,
} from "./storage.js";
import {
  byTestId,
  renderConversation,
  renderConversationTokens,
  renderNotices,
  renderOffer,
  renderUsage,
} from "./view.js";

// Back from Checkout the payment's events may still be on their way to the webhook: the meter is
// read again after each of these pauses (about 20 s in all) before the page says it is late.
const CONFIRM_DELAYS_MS = [0, 1000, 1500, 2000, 2500, 3000, 4000, 5000];
// A turn is followed through Realtime (a few updates a second). After this long without news the
// page reads the turn itself: an event missed while the socket reconnected, Realtime blocked by
// a proxy, a turn still queued.
const TURN_QUIET_MS = 2000;
const TURN_TICK_MS = 500;
// A turn with neither a row nor a known execution after this long never started.
const TURN_LOST_MS = 20_000;
// A Stop the server could not take yet (the turn not started) is asked again this often.
const STOP_RETRY_MS = 1000;
// Row events come in bursts (a settle, then the account): one usage read answers a burst.
const USAGE_DEBOUNCE_MS = 250;
const FINAL = new Set(["completed", "stopped", "failed"]);

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
  // Bumped when the user leaves (logout, a new chat): answers to older requests are ignored.
  generation: 0,
  // The reply being written: { requestId, text, userMessageId, history, executionId, content,
  // status: starting|pending|streaming|stopping, started, stopRequested, stopSent, ... }.
  turn: null,
  watch: null, // the timer that reads a quiet turn
  following: null, // the Realtime subscription, once asked for
  usageTimer: null,
  usageReads: 0, // sequence of usage reads: an older answer never overwrites a newer one
  usageApplied: 0,
  // The last message that did not get a reply. Sending the same text again reuses its request
  // id, so a request that did run on the server is answered from its record and charged once.
  unsent: null,
  error: null, // { title, text, retryable, newChat }
  status: "",
  authMode: "login",
  rendered: { notices: null, offer: null }, // what the notices and the offer last showed
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

// Only what changed is rebuilt: a notice is an alert, and one rebuilt with the same words would
// be read out again.
function renderChat({ toEnd = false } = {}) {
  const demo = isDemo();
  const mode = offerMode();
  if (mode !== null) ensureCatalog();
  renderMessages({ toEnd });
  // A plan that cannot chat gets the plans instead of a conversation and a box that can only fail.
  byTestId("conversation").hidden = demo;
  byTestId("composer").hidden = demo || !state.usageRead;
  byTestId("chat-view").dataset.offer = mode ?? "";
  byTestId("billing-button").hidden = !hasStripePlan();
  byTestId("new-chat").hidden = demo;
  renderUsage(state.usage);
  const alert = currentAlert(state.usage, state.dismissed);
  const noticesKey = JSON.stringify([
    state.usage?.level,
    state.usage?.plan,
    state.usage?.tokens,
    state.blocked,
    demo,
    state.tooLong?.tokens?.remaining,
    state.checkout,
    state.billingError,
    alert,
    state.error,
    state.status,
    state.messages.length > 0,
  ]);
  if (noticesKey !== state.rendered.notices) {
    state.rendered.notices = noticesKey;
    renderNotices({
      usage: state.usage,
      blocked: state.blocked,
      demo,
      tooLong: state.tooLong,
      checkout: state.checkout,
      billingError: state.billingError,
      alert,
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
  }
  const offerKey = JSON.stringify([
    mode,
    state.usage?.plan,
    state.usage?.tokens?.limit,
    state.usage?.tokens?.planTokens,
    state.catalog.status,
    state.catalog.forPlan,
    state.catalog.error,
    state.buying,
  ]);
  if (offerKey !== state.rendered.offer) {
    state.rendered.offer = offerKey;
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
  }
  renderComposer();
}

// The conversation and the composer only: what a turn's progress changes.
function renderMessages({ toEnd = false } = {}) {
  renderConversation(byTestId("conversation"), {
    messages: state.messages,
    turn: state.turn,
    blocked: state.blocked || isDemo(),
    showCost: state.config.showCost,
    toEnd,
  });
  renderConversationTokens(byTestId("conversation-tokens"), conversationTokens(state.messages), {
    writing: state.turn !== null,
  });
}

function renderTurn() {
  renderMessages();
  renderComposer();
}

// Plans bought through Stripe have a customer to manage; Demo has none.
function hasStripePlan() {
  return Boolean(state.usage?.plan) && state.usage.plan !== "demo";
}

function renderComposer() {
  const turn = state.turn;
  const busy = turn !== null;
  const textarea = input();
  textarea.disabled = state.blocked;
  textarea.placeholder = state.blocked
    ? "Chat is paused: the allowance is spent"
    : "Message the assistant…";
  byTestId("send-button").disabled = state.blocked || busy;
  const stopButton = byTestId("stop-button");
  stopButton.hidden = !busy;
  const stopping = turn?.stopRequested === true;
  byTestId("stop-label").textContent = stopping ? "Stopping…" : "Stop";
  stopButton.setAttribute("aria-disabled", stopping ? "true" : "false");
  const hint = byTestId("composer-hint");
  hint.hidden = state.blocked;
  hint.textContent = busy
    ? "The assistant is writing. Esc or Stop ends the reply; you can type your next message."
    : "Enter to send, Shift+Enter for a new line.";
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

// Only what is new is announced: the live region gets it once (emptied first, so that the same
// words twice are still read).
function announce(text) {
  const region = byTestId("announcer");
  region.textContent = "";
  window.setTimeout(() => {
    region.textContent = text;
  }, 60);
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
  const user = state.user;
  const turn = state.turn;
  state.generation += 1;
  dropTurn();
  // A reply nobody will read is stopped, so that it is not charged to the end; the logout waits
  // for that only a moment.
  if (turn?.started) {
    await Promise.race([state.backend.stopTurn(turn.requestId).catch(() => null), pause(1500)]);
  }
  await unfollow();
  try {
    await state.backend.logOut();
  } catch {
    // The session may already be gone; the page forgets it either way.
  }
  // On a shared browser the next person finds nothing of this user's.
  if (user !== null) forgetUser(user.$id);
  leaveChat();
  showAuth();
}

async function unfollow() {
  const following = state.following;
  state.following = null;
  if (following === null) return;
  try {
    await state.backend.unfollow();
  } catch {
    // The socket closes with the page anyway.
  }
}

function leaveChat() {
  dropTurn();
  window.clearTimeout(state.usageTimer);
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
    turn: null,
    usageTimer: null,
    unsent: null,
    error: null,
    status: "",
    rendered: { notices: null, offer: null },
  });
  input().value = "";
  byTestId("conversation").replaceChildren();
  // What was last announced is the user's text too.
  byTestId("announcer").textContent = "";
}

// -- chat ----------------------------------------------------------------------------------------

async function enterChat(user) {
  state.user = user;
  const saved = loadConversation(user.$id);
  state.messages = saved.messages;
  state.dismissed = loadDismissed(user.$id);
  resumeTurn(saved.turn);
  byTestId("user-email").textContent = user.email ?? "";
  show("chat");
  renderChat({ toEnd: true });
  input().focus();
  void follow();
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

// The meter and the turns follow their rows through Realtime from the moment the chat shows.
function follow() {
  if (state.following === null && state.backend !== null) {
    state.following = state.backend
      .follow({
        onTurn: onTurnRow,
        onAccount: () => scheduleUsageRefresh(),
        onReconnected: () => {
          // Whatever happened while the socket was down is read once it is back.
          if (state.turn !== null) void pollTurn(state.turn);
          scheduleUsageRefresh();
        },
      })
      .catch(() => {
        // Realtime unavailable: a turn is read while it runs, the meter with each reply.
      });
  }
  return state.following ?? Promise.resolve();
}

function scheduleUsageRefresh() {
  if (state.user === null) return;
  window.clearTimeout(state.usageTimer);
  state.usageTimer = window.setTimeout(() => {
    state.usageTimer = null;
    void refreshUsage({ quiet: true });
  }, USAGE_DEBOUNCE_MS);
}

async function refreshUsage({ quiet = false } = {}) {
  const generation = state.generation;
  const user = state.user;
  const read = ++state.usageReads;
  try {
    const usage = await state.backend.usage();
    if (state.user === null || state.user !== user) return;
    // Reads may overtake each other: the figures of a later one stand.
    if (read > state.usageApplied) {
      state.usageApplied = read;
      applyUsage(usage);
    }
  } catch (error) {
    if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
      sessionEnded();
      return;
    }
    // The meter is informative; the chat works without it and the next reply refreshes it.
    if (!quiet && generation === state.generation) {
      state.status = "Couldn't load your usage just now.";
    }
  }
  if (state.user === null) return;
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
  void unfollow();
  leaveChat();
  showAuth("Your session has ended. Please log in again.");
}

// -- turns: a reply written on the server, followed as it grows -------------------------------

// What the model sees: the most recent messages (the chat function caps their number), starting
// with a user message as the API requires, without replies that came back empty. A stopped
// reply's text is part of it: the next question may be about it.
function historyFor(text, earlier = state.messages) {
  const limit = Math.max(1, state.config.historyMessages);
  const usable = earlier.filter((m) => m.content.trim() !== "");
  // With a limit of one only the new message goes: slice(-0) would keep the whole history.
  const recent = (limit > 1 ? usable.slice(-(limit - 1)) : []).map(({ role, content }) => ({
    role,
    content,
  }));
  while (recent.length && recent[0].role !== "user") recent.shift();
  recent.push({ role: "user", content: text });
  return recent;
}

function newTurn({ requestId, text, userMessageId, history, executionId = null, started = false }) {
  const now = Date.now();
  return {
    requestId,
    text,
    userMessageId,
    history,
    executionId,
    started,
    content: "",
    status: started ? "pending" : "starting",
    stopRequested: false,
    stopSent: false,
    nextStopAt: 0,
    polling: false,
    finishing: false,
    startedAt: now,
    lastNewsAt: now,
  };
}

function saveTurnState() {
  if (state.user !== null) saveConversation(state.user.$id, state.messages, state.turn);
}

// A reload or a new visit while a reply was being written picks it up where it is.
function resumeTurn(saved) {
  if (saved === null) return;
  const index = state.messages.findIndex((m) => m.id === saved.userMessageId);
  if (index < 0) return;
  state.turn = newTurn({
    ...saved,
    history: historyFor(saved.text, state.messages.slice(0, index)),
    started: true,
  });
  startWatch();
  void pollTurn(state.turn);
}

function send() {
  const text = input().value.trim();
  if (!text || state.blocked || isDemo() || state.turn !== null || state.user === null) return;
  const requestId = state.unsent?.text === text ? state.unsent.requestId : newRequestId();
  const history = historyFor(text);
  const userMessage = { id: `u-${requestId}`, role: "user", content: text };
  state.messages.push(userMessage);
  state.turn = newTurn({ requestId, text, userMessageId: userMessage.id, history });
  state.unsent = null;
  state.error = null;
  state.tooLong = null;
  // News of a purchase is old once the user chats again.
  state.checkout = null;
  state.status = "";
  input().value = "";
  saveTurnState();
  renderChat({ toEnd: true });
  announce("Sent. The assistant is writing.");
  void startTurn(state.turn);
}

async function startTurn(turn) {
  // The first batches of text come a fraction of a second after the start: the subscription is
  // asked for first (the socket is usually open already), without waiting long for it.
  await Promise.race([follow(), pause(1500)]);
  if (turn !== state.turn) return;
  let execution;
  try {
    execution = await state.backend.startTurn(turn.history, turn.requestId);
  } catch (error) {
    turnFailed(turn, error);
    return;
  }
  if (turn !== state.turn) return;
  turn.started = true;
  turn.executionId = typeof execution?.$id === "string" ? execution.$id : null;
  if (turn.status === "starting") turn.status = "pending";
  saveTurnState();
  const outcome = outcomeOf(execution);
  if (outcome !== null) {
    await settleFromOutcome(turn, outcome);
    return;
  }
  if (turn.stopRequested) void sendStop(turn);
  renderTurn();
  startWatch();
}

// The answer of a turn's execution when it is known: a refusal (no turn row was written) or, from
// a runtime that ran the turn before answering, the chat's own answer.
async function settleFromOutcome(turn, { status, body }) {
  if (turn !== state.turn) return;
  if (status >= 200 && status < 300) {
    if (body?.message) {
      await finishTurn(turn, messageDocument(body.message), body.usage ?? null);
    } else {
      turnLost(turn);
    }
    return;
  }
  if (status === 429 && !body?.error) {
    // Appwrite keeps no body of an asynchronous execution. A refused request stored nothing, so
    // the same request sent synchronously answers the refusal with the figures that tell "too
    // long" from "spent" (or, if the allowance grew meanwhile, the reply).
    try {
      const answer = await state.backend.chat(turn.history, turn.requestId);
      if (turn !== state.turn) return;
      await finishTurn(turn, messageDocument(answer?.message), answer?.usage ?? null);
    } catch (error) {
      turnFailed(turn, error);
    }
    return;
  }
  turnFailed(turn, errorOf(status, body));
}

function startWatch() {
  if (state.watch === null) state.watch = window.setInterval(watchTurn, TURN_TICK_MS);
}

function stopWatch() {
  window.clearInterval(state.watch);
  state.watch = null;
}

function watchTurn() {
  const turn = state.turn;
  if (turn === null) {
    stopWatch();
    return;
  }
  if (turn.stopRequested && !turn.stopSent && turn.started && Date.now() >= turn.nextStopAt) {
    void sendStop(turn);
  }
  if (turn.started && Date.now() - turn.lastNewsAt >= TURN_QUIET_MS) void pollTurn(turn);
}

async function pollTurn(turn) {
  if (turn.polling || turn !== state.turn) return;
  turn.polling = true;
  // The next read waits for another quiet spell.
  turn.lastNewsAt = Date.now();
  try {
    const answer = await state.backend.turn(turn.requestId);
    if (turn === state.turn) await applyTurn(turn, answer?.turn, answer?.usage ?? null);
  } catch (error) {
    if (turn !== state.turn) return;
    if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
      sessionEnded();
      return;
    }
    // No row (still queued, or refused before it had one), or the function failing: what
    // became of the execution tells. Offline, the next quiet spell reads again.
    const missing = error instanceof ApiError && error.kind === ErrorKind.NOT_FOUND;
    if (missing || (error instanceof ApiError && error.status > 0)) await noTurnYet(turn, missing);
  } finally {
    turn.polling = false;
  }
}

// The turn could not be read: the execution says whether it is still queued or running, or
// ended without a turn (refused, failed).
async function noTurnYet(turn, missing) {
  if (turn.executionId !== null) {
    let outcome;
    try {
      outcome = await state.backend.executionOutcome(turn.executionId);
    } catch (error) {
      if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
        sessionEnded();
        return;
      }
      if (missing && error instanceof ApiError && error.status === 404) {
        // Neither a turn nor an execution: the platform lost it, nothing will come.
        turnLost(turn);
        return;
      }
      outcome = undefined;
    }
    if (turn !== state.turn) return;
    if (outcome === null) return; // queued or running: its row comes
    const bodiless = outcome !== undefined && outcome.status < 300 && !outcome.body?.message;
    if (outcome !== undefined && !bodiless) {
      await settleFromOutcome(turn, outcome);
      return;
    }
  }
  if (missing && Date.now() - turn.startedAt > TURN_LOST_MS) turnLost(turn);
}

// A turn's row, from Realtime (columns flat) or from GET /turns (usage nested), as one shape.
function turnDocument(row) {
  if (row === null || typeof row !== "object") return null;
  const flat = row.usage === undefined || row.usage === null || typeof row.usage !== "object";
  const usage = flat
    ? {
        inputTokens: Number(row.inputTokens) || 0,
        cacheCreationInputTokens: Number(row.cacheCreationInputTokens) || 0,
        cacheReadInputTokens: Number(row.cacheReadInputTokens) || 0,
        outputTokens: Number(row.outputTokens) || 0,
        totalTokens: Number(row.totalTokens) || 0,
        steps: Number(row.steps) || 0,
        costUsd: (Number(row.costMicroUsd) || 0) / 1_000_000,
      }
    : row.usage;
  return {
    requestId: String(row.requestId ?? ""),
    status: String(row.status ?? ""),
    content: typeof row.content === "string" ? row.content : "",
    model: typeof row.model === "string" ? row.model : "",
    stopReason: typeof row.stopReason === "string" ? row.stopReason : "",
    truncated: row.truncated === true,
    estimated: row.estimated === true,
    usage,
  };
}

// The chat's one-shot answer (`message`) as a finished turn.
function messageDocument(message) {
  return { ...turnDocument(message ?? {}), status: "completed" };
}

function onTurnRow(row) {
  const doc = turnDocument(row);
  if (doc === null) return;
  const turn = state.turn;
  if (turn !== null && doc.requestId === turn.requestId) {
    void applyTurn(turn, doc, null);
    return;
  }
  // Another tab's (or device's) turn: once it ends, its charge is on the meter. (A late event
  // of this tab's own finished turn brings nothing new.)
  const known = state.messages.some((m) => m.id === `a-${doc.requestId}`);
  if (FINAL.has(doc.status) && !known) scheduleUsageRefresh();
}

async function applyTurn(turn, row, usage) {
  const doc = row?.usage !== undefined && typeof row?.usage === "object" ? turnDocument(row) : row;
  if (!doc || turn !== state.turn) return;
  turn.lastNewsAt = Date.now();
  if (FINAL.has(doc.status)) {
    await finishTurn(turn, doc, usage);
    return;
  }
  // Batches may overtake each other; the text of a turn only ever grows.
  if (doc.content.length >= turn.content.length) turn.content = doc.content;
  if (!turn.stopRequested && (doc.status === "pending" || doc.status === "streaming")) {
    turn.status = doc.status;
  }
  if (turn.stopRequested && !turn.stopSent && turn.started) void sendStop(turn);
  renderTurn();
}

async function finishTurn(turn, doc, usage) {
  if (turn !== state.turn || turn.finishing) return;
  turn.finishing = true;
  let final = doc;
  let figures = usage;
  if (figures === null) {
    // The row has the reply; the meter's figures come with the turn's own read.
    try {
      const answer = await state.backend.turn(turn.requestId);
      if (answer?.turn && FINAL.has(answer.turn.status)) final = turnDocument(answer.turn);
      figures = answer?.usage ?? null;
    } catch {
      // The meter is read again below.
    }
    if (turn !== state.turn) return;
  }
  stopWatch();
  state.turn = null;
  const composerFocused = byTestId("composer").contains(document.activeElement);
  const nobodyFocused = document.activeElement === document.body;
  const charged = Number(final.usage?.totalTokens) > 0;
  let message = null;
  if (final.status === "failed" && !final.content.trim() && !charged) {
    // Nothing was written and nothing charged: the message goes back into the box, and a new
    // request id is used for it (this one has its record).
    state.messages = state.messages.filter((m) => m.id !== turn.userMessageId);
    restoreText({ text: turn.text, requestId: newRequestId() });
    state.error = {
      title: "Message not sent",
      text: "The assistant could not answer. Your message is back in the box.",
      retryable: true,
    };
  } else {
    message = {
      id: `a-${turn.requestId}`,
      role: "assistant",
      content: final.content,
      status: final.status,
      usage: final.usage ?? null,
      truncated: final.truncated === true,
      estimated: final.estimated === true,
      model: final.model ?? "",
    };
    state.messages.push(message);
  }
  saveTurnState();
  const before = levelOf(state.usage);
  if (figures?.tokens) applyUsage(figures);
  else scheduleUsageRefresh();
  renderChat();
  // The Stop button is gone: a keyboard user who was at it goes on in the box.
  if ((composerFocused || nobodyFocused) && !state.blocked) input().focus();
  if (message !== null) announceReply(message);
  // A reply that crossed a threshold raised its alert: the usage answer brings it.
  if (LEVELS.indexOf(levelOf(state.usage)) > LEVELS.indexOf(before)) void refreshUsage();
}

function announceReply(message) {
  const tokens = `${formatTokens(message.usage?.totalTokens)} tokens`;
  const node = byTestId("conversation").querySelector(
    `[data-key="${CSS.escape(message.id)}"] [data-testid="message-content"]`,
  );
  const text = (node?.textContent ?? message.content).trim();
  if (message.status === "stopped") announce(`Stopped · ${tokens}. ${text}`);
  else if (message.status === "failed") announce(`The reply was interrupted · ${tokens}. ${text}`);
  else announce(`Reply: ${text} (${tokens})`);
}

// The message was not answered: it leaves the conversation and goes back into the box.
function turnFailed(turn, error) {
  if (turn !== state.turn) return;
  stopWatch();
  state.turn = null;
  state.messages = state.messages.filter((m) => m.id !== turn.userMessageId);
  saveTurnState();
  failed(turn, error);
}

function turnLost(turn) {
  turnFailed(
    turn,
    new ApiError(ErrorKind.RETRYABLE, "The reply did not arrive. Please try again.", {
      status: 0,
    }),
  );
}

// Leaves the turn without waiting for it (a new chat, a logout).
function dropTurn() {
  stopWatch();
  state.turn = null;
}

function failed(pending, error) {
  if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
    sessionEnded();
    return;
  }
  // Whatever went wrong, the typed message goes back into the box.
  restoreText(pending);
  if (error instanceof ApiError && error.kind === ErrorKind.LIMIT) {
    const usage = error.usage?.tokens ? error.usage : state.usage;
    const sent = pending.history.reduce((sum, message) => sum + message.content.length, 0);
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

// Stop (the button or Esc): the server stops generating and charges what was written; the
// partial reply stays in the conversation.
function stop() {
  const turn = state.turn;
  if (turn === null || turn.stopRequested) return;
  const atButton = document.activeElement === byTestId("stop-button");
  turn.stopRequested = true;
  turn.status = "stopping";
  renderTurn();
  if (atButton || document.activeElement === document.body) input().focus();
  announce("Stopping the reply.");
  if (turn.started) void sendStop(turn);
}

async function sendStop(turn) {
  if (turn.stopSent || turn !== state.turn) return;
  turn.stopSent = true;
  try {
    const answer = await state.backend.stopTurn(turn.requestId);
    // Settled: the final state and its charge; "stopping": Realtime or a read brings the end.
    if (turn === state.turn) await applyTurn(turn, answer?.turn, answer?.usage ?? null);
  } catch (error) {
    if (turn !== state.turn) return;
    if (error instanceof ApiError && error.kind === ErrorKind.AUTH) {
      sessionEnded();
      return;
    }
    // No row yet (a queued turn) or no answer: asked again in a moment.
    turn.stopSent = false;
    turn.nextStopAt = Date.now() + STOP_RETRY_MS;
  }
}

function retry() {
  const textarea = input();
  if (!textarea.value.trim() && state.unsent) textarea.value = state.unsent.text;
  send();
}

function newChat() {
  if (state.user === null) return;
  const turn = state.turn;
  state.generation += 1;
  dropTurn();
  // The reply of the old chat would only be charged to its end: it is stopped.
  if (turn?.started) void state.backend.stopTurn(turn.requestId).catch(() => null);
  state.messages = [];
  state.unsent = null;
  state.error = null;
  state.tooLong = null;
  state.status = "";
  clearConversation(state.user.$id);
  renderChat();
  input().focus();
  announce("New chat.");
}

function onKeydown(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
}

function onDocumentKeydown(event) {
  if (event.key !== "Escape" || event.isComposing) return;
  if (state.turn !== null) {
    event.preventDefault();
    stop();
    return;
  }
  closeComposition();
}

// -- the meter's details: what the limit is made of ---------------------------------------------

function toggleComposition() {
  const meter = byTestId("usage-meter");
  const open = meter.dataset.open !== "true";
  meter.dataset.open = String(open);
  byTestId("usage-tokens").setAttribute("aria-expanded", String(open));
}

function closeComposition() {
  const meter = byTestId("usage-meter");
  if (meter.dataset.open !== "true") return;
  meter.dataset.open = "false";
  byTestId("usage-tokens").setAttribute("aria-expanded", "false");
}

async function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("pre");
  const copied = await copyText(code?.textContent ?? "");
  button.textContent = copied ? "Copied" : "Copy failed";
  announce(copied ? "Code copied." : "The code could not be copied.");
  window.setTimeout(() => {
    button.textContent = "Copy";
  }, 2000);
}

// -- start ---------------------------------------------------------------------------------------

function wire() {
  byTestId("auth-form").addEventListener("submit", submitAuth);
  byTestId("auth-toggle").addEventListener("click", toggleAuthMode);
  byTestId("logout").addEventListener("click", logOut);
  byTestId("new-chat").addEventListener("click", newChat);
  byTestId("billing-button").addEventListener("click", () => void openPortal());
  byTestId("stop-button").addEventListener("click", stop);
  byTestId("usage-tokens").addEventListener("click", toggleComposition);
  byTestId("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  byTestId("conversation").addEventListener("click", (event) => {
    const button = event.target.closest?.("[data-copy]");
    if (button) void copyCode(button);
  });
  document.addEventListener("keydown", onDocumentKeydown);
  document.addEventListener("click", (event) => {
    if (!byTestId("usage-meter").contains(event.target)) closeComposition();
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
  // Back online: a turn that went quiet is read at once, and the meter too.
  window.addEventListener("online", () => {
    if (state.turn !== null) void pollTurn(state.turn);
    scheduleUsageRefresh();
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
