// The conversation of each user, kept in localStorage so that it survives a reload.

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
