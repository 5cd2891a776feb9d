// The chat page: login, the conversation, the usage meter and the notices around them.

import { ApiError, ErrorKind, createBackend, loadConfig, newRequestId } from "./api.js";
import { levelOf } from "./format.js";
import { clearConversation, loadConversation, saveConversation } from "./storage.js";
import { byTestId, renderConversation, renderNotices, renderUsage } from "./view.js";

const state = {
  config: null,
  backend: null,
  user: null,
  messages: [],
  usage: null,
  // Set when a 429 arrives or the usage says the limit is reached: input stays off until a
  // fresh usage reading (page load) says otherwise.
  blocked: false,
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

function renderChat() {
  renderConversation(
    byTestId("conversation"),
    state.messages,
    state.pending?.text ?? null,
    state.blocked,
  );
  renderUsage(state.usage);
  renderNotices({
    usage: state.usage,
    blocked: state.blocked,
    error: state.error,
    status: state.status,
    onRetry: retry,
    onNewChat: newChat,
  });
  renderComposer();
  const list = byTestId("conversation");
  list.scrollTop = list.scrollHeight;
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
  state.usage = usage;
  state.blocked = levelOf(usage) === "exceeded";
}

// -- auth ----------------------------------------------------------------------------------------

function renderAuth(message = "") {
  const signup = state.authMode === "signup";
  byTestId("auth-title").textContent = signup ? "Create your account" : "Log in";
  byTestId("auth-submit").textContent = signup ? "Create account" : "Log in";
  byTestId("auth-switch-text").textContent = signup ? "Already have an account?" : "No account yet?";
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
    blocked: false,
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
  byTestId("user-email").textContent = user.email ?? "";
  show("chat");
  renderChat();
  input().focus();
  await refreshUsage();
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
  renderChat();
}

function sessionEnded() {
  state.generation += 1;
  leaveChat();
  showAuth("Your session has ended. Please log in again.");
}

function send() {
  const text = input().value.trim();
  if (!text || state.blocked || state.pending !== null || state.user === null) return;
  const requestId = state.unsent?.text === text ? state.unsent.requestId : newRequestId();
  state.generation += 1;
  state.pending = { generation: state.generation, text, requestId };
  state.unsent = null;
  state.error = null;
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
    applyUsage(reply?.usage);
    renderChat();
    if (!state.blocked) input().focus();
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
    applyUsage(error.usage);
    state.blocked = true;
    state.error = null;
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
  byTestId("stop-button").addEventListener("click", stop);
  byTestId("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input().addEventListener("keydown", onKeydown);
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
