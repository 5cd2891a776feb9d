// What the page keeps in the browser: each user's conversation with the turn in flight and the
// dismissed notices (localStorage, across reloads, until logout), and the purchase a tab is away
// at Checkout for (sessionStorage).

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

// A turn still streaming when the page went away: enough to pick it up again.
function validTurn(turn) {
  return (
    turn !== null &&
    typeof turn === "object" &&
    typeof turn.requestId === "string" &&
    typeof turn.text === "string" &&
    typeof turn.userMessageId === "string"
  );
}

let sequence = 0;

// Messages saved before they had ids get one, so that the page can update them in place.
function withId(message) {
  if (typeof message.id === "string" && message.id) return message;
  sequence += 1;
  return { ...message, id: `m-${Date.now().toString(36)}-${sequence}` };
}

export function loadConversation(userId) {
  try {
    const raw = window.localStorage.getItem(key(userId));
    if (!raw) return { messages: [], turn: null };
    const parsed = JSON.parse(raw);
    const messages = Array.isArray(parsed?.messages)
      ? parsed.messages.filter(validMessage).map(withId)
      : [];
    const turn = validTurn(parsed?.turn) ? parsed.turn : null;
    return { messages, turn };
  } catch {
    // Unreadable storage (private mode, corrupt JSON) must not stop the chat.
    return { messages: [], turn: null };
  }
}

export function saveConversation(userId, messages, turn = null) {
  try {
    const kept = messages.slice(-MAX_MESSAGES);
    const record = { messages: kept };
    if (turn !== null) {
      record.turn = {
        requestId: turn.requestId,
        text: turn.text,
        userMessageId: turn.userMessageId,
        executionId: turn.executionId ?? null,
      };
    }
    window.localStorage.setItem(key(userId), JSON.stringify(record));
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

// The session the Appwrite SDK keeps in localStorage when the API is on another site than the
// page (its cookie fallback); the session itself is deleted on the server at logout.
const SDK_SESSION_KEY = "cookieFallback";

// Logout on a shared browser: nothing of the user's stays behind, whatever key it is under.
export function forgetUser(userId) {
  for (const store of [window.localStorage, window.sessionStorage]) {
    try {
      const keys = Array.from({ length: store.length }, (_, index) => store.key(index));
      for (const name of keys) {
        if (name === null) continue;
        const ours = name.startsWith("metered-chat:");
        if ((ours && (name.endsWith(`:${userId}`) || name === CHECKOUT_KEY)) || name === SDK_SESSION_KEY) {
          store.removeItem(name);
        }
      }
    } catch {
      // A blocked storage holds nothing to clear.
    }
  }
}
