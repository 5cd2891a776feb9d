// DOM building and rendering. Text from users is only ever set through textContent; replies go
// through markdown.js, which hands back sanitised nodes: nothing here assigns HTML.

import {
  barPercent,
  checkoutMessage,
  demoNotice,
  formatDate,
  formatPercent,
  formatPrice,
  formatTokens,
  levelOf,
  limitComposition,
  limitNotice,
  messageBreakdown,
  planName,
  planTokens,
  purchaseLabel,
  tooLongNotice,
  usageNotice,
} from "./format.js";
import { renderMarkdown } from "./markdown.js";

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

function tokenChip(message, { showCost }) {
  const usage = message.usage;
  const id = `tokens-tip-${++tooltipSequence}`;
  const rows = messageBreakdown(usage, { showCost, estimated: message.estimated === true }).map(
    ([label, value]) =>
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
      "data-focus-key": "chip",
      "aria-describedby": id,
      "aria-label": `${total} tokens used by this reply`,
    },
    boltIcon(12),
    el("span", { text: `${total} tokens` }),
  );
  // The tooltip role goes on a wrapper: on the list itself it would hide the terms' list.
  const tip = el(
    "div",
    { id, role: "tooltip", className: "token-tip", "data-testid": "message-token-breakdown" },
    el("dl", { className: "tip-rows" }, ...rows),
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

// A reply's text as rendered Markdown; the copy buttons get keys so that focus survives a
// re-render while the reply is still being written.
function fillReply(bubble, content) {
  const fragment = renderMarkdown(content);
  fragment.querySelectorAll("[data-copy]").forEach((button, index) => {
    button.dataset.focusKey = `copy-${index}`;
  });
  bubble.replaceChildren(fragment);
}

const STATUS_LABELS = { stopped: "Stopped", failed: "Interrupted" };

export function messageItem(message, { showCost = false } = {}) {
  const isAssistant = message.role === "assistant";
  const item = el("li", {
    className: `message message-${message.role}`,
    "data-testid": "message",
    "data-role": message.role,
    "data-key": message.id,
    "data-status": isAssistant ? (message.status ?? "completed") : null,
  });
  item.append(
    el("span", { className: "visually-hidden", text: isAssistant ? "Assistant:" : "You:" }),
  );
  if (!isAssistant) {
    item.append(
      el("div", { className: "bubble", "data-testid": "message-content", text: message.content }),
    );
    return item;
  }
  const bubble = el("div", { className: "bubble markdown", "data-testid": "message-content" });
  if (message.content.trim()) {
    fillReply(bubble, message.content);
  } else {
    bubble.append(el("p", { className: "empty-reply", text: "No text was written." }));
  }
  item.append(bubble);
  const meta = el("div", { className: "message-meta", "data-testid": "message-meta" });
  const label = STATUS_LABELS[message.status];
  if (label) {
    meta.append(
      el("span", {
        className: `message-state state-${message.status}`,
        "data-testid": `message-${message.status}`,
        text: label,
      }),
    );
    if (message.usage) meta.append(el("span", { className: "separator", text: "·" }));
  }
  if (message.usage) meta.append(tokenChip(message, { showCost }));
  // A stopped reply is short because the user stopped it, whatever the server calls it.
  if (message.truncated && message.status !== "stopped") {
    meta.append(
      el("span", {
        className: "truncated-note",
        "data-testid": "message-truncated",
        text: "Cut short: the token limit was reached",
      }),
    );
  }
  if (meta.childElementCount) item.append(meta);
  return item;
}

const WRITING_LABELS = {
  starting: "Starting…",
  pending: "Starting…",
  streaming: "Writing…",
  stopping: "Stopping…",
};

// The reply being written: its text so far and what is happening to it.
export function streamingItem(turn) {
  const item = el("li", {
    className: "message message-assistant message-writing",
    "data-testid": "message",
    "data-role": "assistant",
    "data-key": `turn-${turn.requestId}`,
    "data-status": "writing",
    "aria-busy": "true",
  });
  const bubble = el("div", { className: "bubble markdown", "data-testid": "message-content" });
  const state = el(
    "p",
    { className: "writing-state", "data-testid": "writing-state" },
    el(
      "span",
      { className: "typing", "aria-hidden": "true" },
      el("span", { className: "dot" }),
      el("span", { className: "dot" }),
      el("span", { className: "dot" }),
    ),
    el("span", { className: "writing-label" }),
  );
  item.append(el("span", { className: "visually-hidden", text: "Assistant:" }), bubble, state);
  updateStreamingItem(item, turn);
  return item;
}

function updateStreamingItem(item, turn) {
  const bubble = item.querySelector('[data-testid="message-content"]');
  const content = turn.content ?? "";
  if (item.dataset.length !== String(content.length)) {
    item.dataset.length = String(content.length);
    const active = document.activeElement;
    const key = bubble.contains(active) ? active?.dataset?.focusKey : undefined;
    if (content) fillReply(bubble, content);
    else bubble.replaceChildren();
    bubble.hidden = !content;
    if (key) bubble.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
  }
  item.dataset.turnStatus = turn.status;
  item.querySelector(".writing-label").textContent = WRITING_LABELS[turn.status] ?? "Writing…";
}

export function emptyState() {
  return el(
    "li",
    { className: "empty-state", "data-testid": "empty-state", "data-key": "empty" },
    el("p", { className: "empty-title", text: "Start a conversation" }),
    el("p", {
      text: "Ask anything. Each reply shows the tokens it used; the meter above shows your month.",
    }),
  );
}

function signature(message, showCost) {
  const usage = message.usage?.totalTokens ?? "";
  return [message.status, message.content.length, usage, message.truncated, showCost].join("|");
}

// Updates the list in place: a message already shown keeps its node (and the focus of a token
// chip in it), only the reply being written changes, and the view follows the end of the
// conversation only when the reader was there (or has just sent a message).
export function renderConversation(
  list,
  { messages, turn = null, blocked = false, showCost = false, toEnd = false },
) {
  const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  const existing = new Map(
    Array.from(list.children, (node) => [node.dataset.key ?? "", node]),
  );
  const wanted = [];
  for (const message of messages) {
    const sig = signature(message, showCost);
    let node = existing.get(message.id);
    if (node && node.dataset.signature !== sig) {
      const replacement = messageItem(message, { showCost });
      const active = document.activeElement;
      const key = node.contains(active) ? active?.dataset?.focusKey : undefined;
      node.replaceWith(replacement);
      if (key) replacement.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
      node = replacement;
    }
    if (!node) node = messageItem(message, { showCost });
    node.dataset.signature = sig;
    wanted.push(node);
  }
  if (turn !== null) {
    const node = existing.get(`turn-${turn.requestId}`);
    if (node) updateStreamingItem(node, turn);
    wanted.push(node ?? streamingItem(turn));
  }
  // At the limit the notice says all there is to say; an invitation to chat would contradict it.
  if (!wanted.length && !blocked) wanted.push(existing.get("empty") ?? emptyState());
  wanted.forEach((node, index) => {
    if (list.children[index] !== node) list.insertBefore(node, list.children[index] ?? null);
  });
  while (list.children.length > wanted.length) list.lastElementChild.remove();
  if (atEnd || toEnd) list.scrollTop = list.scrollHeight;
}

export function renderConversationTokens(node, total, { writing = false } = {}) {
  node.hidden = total <= 0;
  node.textContent = `This chat: ${formatTokens(total)} tokens${writing ? " so far" : ""}`;
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
  byTestId("usage-composition-rows").replaceChildren(
    ...limitComposition(usage).map(([label, value]) =>
      el(
        "div",
        { className: `tip-row${label === "Limit" ? " tip-total" : ""}` },
        el("dt", { text: label }),
        el("dd", { text: value }),
      ),
    ),
  );
}

function notice(testId, className, title, text, ...extra) {
  const usageRelated = testId !== "error-banner" && testId !== "billing-error";
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

function button(testId, label, onClick, { className = "button button-secondary", ...rest } = {}) {
  const node = el("button", {
    type: "button",
    className,
    "data-testid": testId,
    "data-focus-key": rest["data-focus-key"] ?? testId,
    text: label,
    ...rest,
  });
  node.addEventListener("click", onClick);
  return node;
}

// Rebuilding a region must not drop the keyboard user's place: the control that had focus gets
// it back when the new content has one with the same key.
function rebuild(container, build) {
  const active = document.activeElement;
  const key = container.contains(active) ? active?.dataset?.focusKey : undefined;
  container.replaceChildren();
  build();
  if (key) container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
}

function checkoutNotice(checkout, usage, { onDismiss, onCheckAgain }) {
  const { title, text } = checkoutMessage(
    checkout.phase,
    checkout.purchase,
    checkout.usage ?? usage,
  );
  const working = checkout.phase === "confirming";
  const className =
    {
      slow: "notice-warning",
      confirmed: "notice-success",
    }[checkout.phase] ?? "notice-info";
  const node = el(
    "div",
    {
      className: `notice ${className}`,
      // Progress is a status; an outcome the user should act on or know about is an alert.
      role: working ? "status" : "alert",
      "data-testid": "checkout-status",
      "data-phase": checkout.phase,
    },
    el("p", { className: "notice-title", text: title }),
    el("p", { className: "notice-text", text }),
  );
  if (!working) {
    const actions = el("div", { className: "notice-actions" });
    if (checkout.phase === "slow")
      actions.append(button("checkout-check-again", "Check again", onCheckAgain));
    actions.append(
      button("checkout-dismiss", "Dismiss", onDismiss, { className: "button button-quiet" }),
    );
    node.append(actions);
  }
  return node;
}

// Notices, most urgent first: the limit, then a request error, then the usage warning.
export function renderNotices({
  usage,
  blocked,
  demo = false,
  tooLong = null,
  checkout = null,
  billingError = null,
  alert = { alert: null, dismissed: false },
  error,
  status,
  onRetry,
  onNewChat,
  onDismissAlert = () => {},
  onShowOffer = () => {},
  onDismissCheckout = () => {},
  onCheckAgain = () => {},
  onDismissBillingError = () => {},
  hasMessages = false,
}) {
  const container = byTestId("notices");
  rebuild(container, () =>
    buildNotices(container, {
      usage,
      blocked,
      demo,
      tooLong,
      checkout,
      billingError,
      alert,
      error,
      status,
      onRetry,
      onNewChat,
      onDismissAlert,
      onShowOffer,
      onDismissCheckout,
      onCheckAgain,
      onDismissBillingError,
      hasMessages,
    }),
  );
}

function buildNotices(container, options) {
  const { usage, blocked, demo, tooLong, checkout, billingError, alert, error, status } = options;
  const { onRetry, onNewChat, hasMessages } = options;
  if (checkout) {
    container.append(
      checkoutNotice(checkout, usage, {
        onDismiss: options.onDismissCheckout,
        onCheckAgain: options.onCheckAgain,
      }),
    );
  }
  if (billingError) {
    const dismiss = button("billing-error-dismiss", "Dismiss", options.onDismissBillingError, {
      className: "button button-quiet",
    });
    container.append(
      notice(
        "billing-error",
        "notice-error",
        "Billing",
        billingError,
        el("div", { className: "notice-actions" }, dismiss),
      ),
    );
  }
  if (demo) {
    // The offer below explains the Demo plan; a limit notice on top would say it twice.
  } else if (blocked) {
    const { title, text } = limitNotice(usage);
    container.append(notice("limit-notice", "notice-exceeded", title, text));
  } else if (tooLong) {
    const { title, text } = tooLongNotice(tooLong);
    const actions = hasMessages
      ? el(
          "div",
          { className: "notice-actions" },
          button("too-long-new-chat", "Start a new chat", onNewChat),
        )
      : null;
    container.append(notice("too-long-notice", "notice-warning", title, text, actions));
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
      el("p", {
        className: "status-note",
        role: "status",
        "data-testid": "status-note",
        text: status,
      }),
    );
  }
  // The banner of the current level; the server's alert for that level, when there is one, is
  // the same news once per period, so it is folded into the banner and dismissing it hides both.
  const warning = blocked || demo || alert.dismissed ? null : usageNotice(usage);
  if (warning) {
    const backed = Boolean(alert.alert?.message);
    const title = backed ? warning.alertTitle : warning.title;
    const text = backed ? `${alert.alert.message} ${warning.left}` : warning.text;
    const actions = el(
      "div",
      { className: "notice-actions" },
      button("show-offer", "Get more tokens", options.onShowOffer),
    );
    if (alert.alert) {
      actions.append(
        button("dismiss-alert", "Dismiss", () => options.onDismissAlert(alert.alert.id), {
          className: "button button-quiet",
          "aria-label": "Dismiss this usage alert",
        }),
      );
    }
    const banner = notice("usage-banner", `notice-${warning.level}`, title, text, actions);
    banner.dataset.level = warning.level;
    if (alert.alert) banner.dataset.noticeId = String(alert.alert.id);
    container.append(banner);
  }
}

// -- the offer: plans, packs and billing -------------------------------------------------------

function planCard(plan, { busy, compact, onPlan }) {
  const price = formatPrice(plan.price);
  const key = `plan:${plan.id}`;
  // Beside the plan's name, as a row, the button needs no name of its own; its label has it.
  const label = busy === key ? "Opening checkout…" : compact ? "Choose" : `Choose ${plan.name}`;
  const choose = button("plan-choose", label, () => onPlan(plan), {
    className: "button button-primary button-wide",
    "data-plan": plan.id,
    "data-focus-key": key,
    "aria-label": purchaseLabel(plan, "plan"),
    disabled: busy !== null,
  });
  return el(
    "li",
    { className: "plan-card", "data-testid": "plan-card", "data-plan": plan.id },
    el(
      "div",
      { className: "plan-info" },
      el("h3", { className: "plan-name", text: plan.name }),
      el("p", {
        className: "plan-tokens",
        "data-testid": "plan-tokens",
        text: planTokens(plan.tokens),
      }),
      el(
        "p",
        { className: "plan-price", "data-testid": "plan-price" },
        el("span", { className: "plan-amount", text: price || "Price at checkout" }),
        price ? el("span", { className: "plan-interval", text: " a month" }) : null,
      ),
    ),
    choose,
  );
}

// The button's name is its visible text with a few hidden words around it ("Buy +25,000 tokens
// once for $5.00"), so that what a speech user reads out is the name.
function packButton(pack, { busy, onTopup }) {
  const key = `topup:${pack.id}`;
  const price = formatPrice(pack.price);
  const hidden = (text) => el("span", { className: "visually-hidden", text });
  const label =
    busy === key
      ? el("span", { className: "pack-tokens", text: "Opening checkout…" })
      : el(
          "span",
          { className: "pack-tokens" },
          hidden("Buy "),
          `+${formatTokens(pack.tokens)} tokens`,
          hidden(price ? " once for " : " once"),
        );
  const node = el(
    "button",
    {
      type: "button",
      className: "button button-secondary pack-button",
      "data-testid": "topup-buy",
      "data-topup": pack.id,
      "data-focus-key": key,
      disabled: busy !== null,
    },
    label,
    price ? el("span", { className: "pack-price", text: price }) : null,
  );
  node.addEventListener("click", () => onTopup(pack));
  return el("li", {}, node);
}

const OFFER_TITLES = {
  demo: "Choose a plan to start chatting",
  limit: "Add tokens to keep chatting",
  browse: "Get more tokens",
};

// `mode` is null (no offer), "demo" (the plan cannot chat), "limit" (the allowance is spent) or
// "browse" (asked for from a usage warning).
export function renderOffer({ mode, usage, catalog, busy, handlers }) {
  const section = byTestId("offer");
  section.hidden = mode === null;
  section.dataset.mode = mode ?? "";
  if (mode === null) {
    section.replaceChildren();
    return;
  }
  rebuild(section, () => buildOffer(section, { mode, usage, catalog, busy, handlers }));
}

function buildOffer(section, { mode, usage, catalog, busy, handlers }) {
  const head = el(
    "div",
    { className: "offer-head" },
    el("h2", { id: "offer-title", className: "offer-title", text: OFFER_TITLES[mode] }),
  );
  if (mode === "browse") {
    head.append(
      button("offer-close", "Close", handlers.onClose, { className: "button button-quiet" }),
    );
  }
  section.append(head);
  if (mode === "demo") {
    const { title, text } = demoNotice(usage);
    section.append(
      el(
        "div",
        { className: "demo-explainer", "data-testid": "demo-explainer" },
        el("p", { className: "demo-title", text: title }),
        el("p", { className: "demo-text", text }),
      ),
    );
  }
  if (catalog.status !== "ready") {
    if (catalog.status === "failed") {
      section.append(
        el(
          "div",
          { className: "offer-failed", role: "alert", "data-testid": "plans-error" },
          el("p", { text: catalog.error || "The plans could not be loaded." }),
          button("plans-retry", "Try again", handlers.onRetryPlans),
        ),
      );
    } else {
      section.append(
        el("p", { className: "offer-loading", role: "status", text: "Loading plans…" }),
      );
    }
    if (usage?.plan && usage.plan !== "demo") section.append(billingRow(busy, handlers));
    return;
  }
  const planTokensNow = Number(usage?.tokens?.planTokens) || 0;
  // Only bigger plans are an upgrade; moving down or cancelling is the billing portal's job.
  const plans = catalog.plans.filter(
    (plan) => !plan.current && plan.id !== "demo" && plan.tokens > planTokensNow,
  );
  const planPart = [];
  if (plans.length) {
    if (mode !== "demo") {
      const subtitle = usage?.plan === "demo" ? "Choose a plan" : "Upgrade your plan";
      planPart.push(el("h3", { className: "offer-subtitle", text: subtitle }));
    }
    planPart.push(
      el(
        "ul",
        { className: "plan-list", "data-testid": "plans" },
        ...plans.map((plan) =>
          planCard(plan, { busy, compact: mode !== "demo", onPlan: handlers.onPlan }),
        ),
      ),
    );
  }
  const packPart = [];
  if (catalog.topups.length) {
    packPart.push(
      el(
        "div",
        { className: "offer-subhead" },
        el("h3", {
          className: "offer-subtitle",
          text: mode === "demo" ? "Or buy tokens once" : "Buy a pack of tokens",
        }),
        el("p", {
          className: "offer-note",
          text: "Paid once, used after your monthly allowance, kept across resets.",
        }),
      ),
      el(
        "ul",
        { className: "pack-list", "data-testid": "topups" },
        ...catalog.topups.map((pack) => packButton(pack, { busy, onTopup: handlers.onTopup })),
      ),
    );
  }
  // Demo needs a plan first; at the limit a pack is the quickest way back to the chat.
  section.append(...(mode === "demo" ? [...planPart, ...packPart] : [...packPart, ...planPart]));
  if (usage?.plan && usage.plan !== "demo") section.append(billingRow(busy, handlers));
}

function billingRow(busy, handlers) {
  return el(
    "p",
    { className: "offer-billing" },
    el("span", { text: "Change or cancel your plan, or see your invoices:" }),
    button(
      "manage-billing",
      busy === "portal" ? "Opening billing…" : "Manage billing",
      handlers.onPortal,
      {
        "data-focus-key": "portal",
        disabled: busy !== null,
      },
    ),
  );
}
