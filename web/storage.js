// What the page keeps in the browser: each user's conversation and dismissed notices
// (localStorage, across reloads), and the purchase a tab is away at Checkout for (sessionStorage).

const PREFIX = "metered-chat:conversation:v1:";
// Old messages beyond this are dropped: the request body has a size limit anyway.
const MAX_MESSAGES = 200;

function key(userId) {
  return PREFIX + userId;
}

function validMessage(message) {
  return (
    message !== null &&
    typeof message === "object" &&
    (message.role === "user" || message.role === "assistant") &&
    typeof message.content === "string"
  );
}

export function loadConversation(userId) {
  try {
    const raw = window.localStorage.getItem(key(userId));
    if (!raw) return [];
    const parsed = JSON.parse(raw);
    return Array.isArray(parsed?.messages) ? parsed.messages.filter(validMessage) : [];
  } catch {
    // Unreadable storage (private mode, corrupt JSON) must not stop the chat.
    return [];
  }
}

export function saveConversation(userId, messages) {
  try {
    const kept = messages.slice(-MAX_MESSAGES);
    window.localStorage.setItem(key(userId), JSON.stringify({ messages: kept }));
  } catch {
    // A full or blocked storage only costs persistence across reloads.
  }
}

export function clearConversation(userId) {
  try {
    window.localStorage.removeItem(key(userId));
  } catch {
    // Nothing to clear.
  }
}

const DISMISSED_PREFIX = "metered-chat:dismissed-notices:v1:";
// Notice ids come one per threshold per period: a few dozen cover a long time.
const MAX_DISMISSED = 50;

export function loadDismissed(userId) {
  try {
    const parsed = JSON.parse(window.localStorage.getItem(DISMISSED_PREFIX + userId) ?? "[]");
    return new Set(Array.isArray(parsed) ? parsed.map(String) : []);
  } catch {
    return new Set();
  }
}

export function saveDismissed(userId, ids) {
  try {
    const kept = [...ids].slice(-MAX_DISMISSED);
    window.localStorage.setItem(DISMISSED_PREFIX + userId, JSON.stringify(kept));
  } catch {
    // The notice may come back after a reload; nothing else is lost.
  }
}

const CHECKOUT_KEY = "metered-chat:checkout:v1";

// Remembered before leaving for Checkout or the billing portal: what was bought and the
// allowance before, so that the page, back again, can tell when the change has been applied.
export function rememberCheckout(purchase) {
  try {
    window.sessionStorage.setItem(CHECKOUT_KEY, JSON.stringify(purchase));
  } catch {
    // Without it the page still refreshes the meter on return.
  }
}

export function pendingCheckout(userId) {
  try {
    const parsed = JSON.parse(window.sessionStorage.getItem(CHECKOUT_KEY) ?? "null");
    return parsed?.userId === userId ? parsed : null;
  } catch {
    return null;
  }
}

export function forgetCheckout() {
  try {
    window.sessionStorage.removeItem(CHECKOUT_KEY);
  } catch {
    // Nothing to forget.
  }
}
