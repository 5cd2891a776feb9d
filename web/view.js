// DOM building and rendering. Text from users or the model is only ever set through
// textContent: nothing here parses HTML.

import {
  barPercent,
  formatDate,
  formatPercent,
  formatTokens,
  levelOf,
  limitNotice,
  messageBreakdown,
  planName,
  usageNotice,
} from "./format.js";

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function byTestId(id) {
  return document.querySelector(`[data-testid="${id}"]`);
}

let tooltipSequence = 0;

function tokenChip(usage) {
  const id = `tokens-tip-${++tooltipSequence}`;
  const rows = messageBreakdown(usage).map(([label, value]) =>
    el("div", { className: "tip-row" }, el("dt", { text: label }), el("dd", { text: value })),
  );
  const total = formatTokens(usage?.totalTokens);
  // A button is focusable by keyboard and touch; the tooltip shows on hover and focus.
  const chip = el(
    "button",
    {
      type: "button",
      className: "token-chip",
      "data-testid": "message-tokens",
      "aria-describedby": id,
      "aria-label": `${total} tokens used by this reply`,
    },
    boltIcon(12),
    el("span", { text: `${total} tokens` }),
  );
  const tip = el(
    "dl",
    { id, role: "tooltip", className: "token-tip", "data-testid": "message-token-breakdown" },
    ...rows,
  );
  return el("span", { className: "token-info" }, chip, tip);
}

export function boltIcon(size) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", String(size));
  svg.setAttribute("height", String(size));
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", "M13.5 2 4 13.5h6.5L9.5 22 20 9.5h-6.5L13.5 2z");
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

export function messageItem(message) {
  const isAssistant = message.role === "assistant";
  const item = el("li", {
    className: `message message-${message.role}`,
    "data-testid": "message",
    "data-role": message.role,
  });
  item.append(
    el("span", { className: "visually-hidden", text: isAssistant ? "Assistant:" : "You:" }),
    el("div", { className: "bubble", "data-testid": "message-content", text: message.content }),
  );
  if (isAssistant) {
    const meta = el("div", { className: "message-meta" });
    if (message.usage) meta.append(tokenChip(message.usage));
    if (message.truncated) {
      meta.append(
        el("span", {
          className: "truncated-note",
          "data-testid": "message-truncated",
          text: "Cut short: the token limit was reached",
        }),
      );
    }
    if (meta.childElementCount) item.append(meta);
  }
  return item;
}

export function pendingItem() {
  return el(
    "li",
    { className: "message message-assistant message-pending", "data-testid": "message-pending" },
    el(
      "div",
      { className: "bubble typing", role: "status", "aria-label": "The assistant is replying" },
      el("span", { className: "dot" }),
      el("span", { className: "dot" }),
      el("span", { className: "dot" }),
    ),
  );
}

export function emptyState() {
  return el(
    "li",
    { className: "empty-state", "data-testid": "empty-state" },
    el("p", { className: "empty-title", text: "Start a conversation" }),
    el("p", {
      text: "Ask anything. Each reply shows the tokens it used; the meter above shows your month.",
    }),
  );
}

export function renderConversation(list, messages, pendingText, blocked) {
  list.replaceChildren();
  for (const message of messages) list.append(messageItem(message));
  if (pendingText !== null) {
    list.append(messageItem({ role: "user", content: pendingText }), pendingItem());
  }
  // At the limit the notice says all there is to say; an invitation to chat would contradict it.
  if (!list.childElementCount && !blocked) list.append(emptyState());
}

export function renderUsage(usage) {
  const meter = byTestId("usage-meter");
  if (!usage?.tokens) {
    meter.hidden = true;
    return;
  }
  const level = levelOf(usage);
  const tokens = usage.tokens;
  const percent = barPercent(usage);
  meter.hidden = false;
  meter.dataset.level = level;
  byTestId("usage-tokens").textContent =
    `${formatTokens(tokens.used)} / ${formatTokens(tokens.limit)} tokens`;
  byTestId("usage-percent").textContent = formatPercent(tokens.percent);
  const bar = byTestId("usage-bar");
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute(
    "aria-valuetext",
    `${formatTokens(tokens.used)} of ${formatTokens(tokens.limit)} tokens used (${formatPercent(tokens.percent)})`,
  );
  bar.dataset.level = level;
  byTestId("usage-fill").style.width = `${percent}%`;
  byTestId("usage-plan").textContent = `${planName(usage.plan)} plan`;
  const date = formatDate(tokens.resetsAt);
  byTestId("usage-reset").textContent = date ? `Resets ${date}` : "";
}

function notice(testId, className, title, text, ...extra) {
  const usageRelated = testId !== "error-banner";
  return el(
    "div",
    { className: `notice ${className}`, role: "alert", "data-testid": testId },
    el(
      "p",
      { className: "notice-title" },
      usageRelated ? boltIcon(16) : null,
      el("span", { text: title }),
    ),
    el("p", { className: "notice-text", text }),
    ...extra,
  );
}

// Notices, most urgent first: the limit, then a request error, then the usage warning.
export function renderNotices({ usage, blocked, error, status, onRetry, onNewChat }) {
  const container = byTestId("notices");
  container.replaceChildren();
  if (blocked) {
    const { title, text } = limitNotice(usage);
    container.append(notice("limit-notice", "notice-exceeded", title, text));
  }
  if (error) {
    const actions = el("div", { className: "notice-actions" });
    if (error.retryable) {
      const retry = el("button", {
        type: "button",
        className: "button button-secondary",
        "data-testid": "retry-button",
        text: "Retry",
      });
      retry.addEventListener("click", onRetry);
      actions.append(retry);
    }
    if (error.newChat) {
      const fresh = el("button", {
        type: "button",
        className: "button button-secondary",
        "data-testid": "error-new-chat",
        text: "Start a new chat",
      });
      fresh.addEventListener("click", onNewChat);
      actions.append(fresh);
    }
    container.append(
      notice(
        "error-banner",
        "notice-error",
        error.title,
        error.text,
        actions.childElementCount ? actions : null,
      ),
    );
  }
  if (status) {
    container.append(
      el("p", { className: "status-note", role: "status", "data-testid": "status-note", text: status }),
    );
  }
  const warning = blocked ? null : usageNotice(usage);
  if (warning) {
    container.append(
      notice("usage-banner", `notice-${warning.level}`, warning.title, warning.text),
    );
    byTestId("usage-banner").dataset.level = warning.level;
  }
}
