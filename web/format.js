// Pure formatting of usage figures and the wording of usage notices. No DOM, no I/O.

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

export const LEVELS = ["ok", "warning", "critical", "exceeded"];

export function formatTokens(value) {
  return integer.format(Number.isFinite(value) ? value : 0);
}

export function formatPercent(value) {
  const number = Number.isFinite(value) ? value : 0;
  // Whole percents read better in a header; keep one decimal only below 1 %.
  const shown = number > 0 && number < 1 ? number.toFixed(1) : Math.floor(number).toString();
  return `${shown}%`;
}

export function formatCost(usd) {
  const value = Number.isFinite(usd) ? usd : 0;
  return `$${value.toFixed(value !== 0 && value < 0.01 ? 5 : 4)}`;
}

// Resets fall on UTC boundaries: showing them in UTC avoids "resets Nov 30" for 1 Dec 00:00 UTC.
export function formatDate(iso) {
  if (!iso) return null;
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return null;
  return date.toLocaleDateString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    timeZone: "UTC",
  });
}

export function planName(plan) {
  if (!plan) return "";
  return plan.charAt(0).toUpperCase() + plan.slice(1);
}

export function levelOf(usage) {
  return LEVELS.includes(usage?.level) ? usage.level : "ok";
}

// The progress bar never shows more than full, whatever the figures say.
export function barPercent(usage) {
  const percent = Number(usage?.tokens?.percent);
  if (!Number.isFinite(percent)) return 0;
  return Math.min(100, Math.max(0, percent));
}

function resetPhrase(usage) {
  const date = formatDate(usage?.tokens?.resetsAt);
  return date ? `on ${date}` : "at the start of your next billing period";
}

// The notice a usage level calls for, or null when none is due.
export function usageNotice(usage) {
  const level = levelOf(usage);
  const tokens = usage?.tokens ?? {};
  const remaining = formatTokens(tokens.remaining);
  const percent = formatPercent(tokens.percent);
  const reset = resetPhrase(usage);
  // With a threshold alert, whose wording names the percent and the reset itself, the banner
  // shows `alertTitle`, the alert and `left`.
  if (level === "warning") {
    return {
      level,
      title: `You've used ${percent} of this month's tokens`,
      text: `${remaining} tokens left. Your allowance resets ${reset}.`,
      left: `${remaining} tokens left.`,
      alertTitle: "Usage alert",
    };
  }
  if (level === "critical") {
    return {
      level,
      title: `Almost out of tokens: ${percent} used`,
      text: `Only ${remaining} tokens left, so long replies may be cut short. Your allowance resets ${reset}.`,
      left: `Only ${remaining} tokens left, so long replies may be cut short.`,
      alertTitle: "Almost out of tokens",
    };
  }
  return null;
}

export function limitNotice(usage) {
  const tokens = usage?.tokens ?? {};
  const plan = planName(usage?.plan);
  const paused = `Chat is paused until your allowance resets ${resetPhrase(usage)}, or until you add tokens below.`;
  if (tokens.remaining > 0) {
    // Refused before the bar is full: what is left cannot pay for even a short reply.
    return {
      title: "The allowance is spent",
      text: `The ${formatTokens(tokens.remaining)} tokens left this period are too few for another reply. ${paused}`,
    };
  }
  const allowance = tokens.limit ? `all ${formatTokens(tokens.limit)} tokens` : "all your tokens";
  return {
    title: "The allowance is spent",
    text: `You've used ${allowance}${plan ? ` of your ${plan} plan` : ""} for this period. ${paused}`,
  };
}

// A reply's tokens by kind; its cost only where the operator shows dollars (`showCost`).
export function messageBreakdown(usage, { showCost = false, estimated = false } = {}) {
  const rows = [
    ["Input", formatTokens(usage?.inputTokens)],
    ["Cache write", formatTokens(usage?.cacheCreationInputTokens)],
    ["Cache read", formatTokens(usage?.cacheReadInputTokens)],
    // A reply cut before the model's final count has its output measured from the text.
    ["Output", `${formatTokens(usage?.outputTokens)}${estimated ? " (measured)" : ""}`],
    ["Steps", formatTokens(usage?.steps)],
  ];
  if (showCost) rows.push(["Cost", formatCost(usage?.costUsd)]);
  return rows;
}

// What the limit is made of, for the meter's details.
export function limitComposition(usage) {
  const tokens = usage?.tokens ?? {};
  const plan = planName(usage?.plan);
  return [
    [plan ? `${plan} plan` : "Plan", formatTokens(tokens.planTokens)],
    ["Add-ons", formatTokens(tokens.addonTokens)],
    ["Top-ups", formatTokens(tokens.topupTokens)],
    ["Limit", formatTokens(tokens.limit)],
    ["Used", formatTokens(tokens.used)],
    ["Left", formatTokens(tokens.remaining)],
  ];
}

// The tokens the conversation on screen has used: every reply's total.
export function conversationTokens(messages) {
  return messages.reduce((sum, message) => {
    const total = Number(message?.usage?.totalTokens);
    return sum + (message?.role === "assistant" && Number.isFinite(total) ? total : 0);
  }, 0);
}

// -- buying ---------------------------------------------------------------------------------------

// Stripe amounts are in the currency's minor unit (cents; yen have none).
export function formatPrice(price) {
  const amount = Number(price?.amount);
  const currency = typeof price?.currency === "string" ? price.currency.toUpperCase() : "";
  if (!Number.isFinite(amount) || !/^[A-Z]{3}$/.test(currency)) return "";
  try {
    const money = new Intl.NumberFormat(undefined, { style: "currency", currency });
    const digits = money.resolvedOptions().maximumFractionDigits;
    return money.format(amount / 10 ** digits);
  } catch {
    return "";
  }
}

// The allowance cannot pay for any reply at all: the Demo plan's case.
export function cannotChat(usage, minChatTokens) {
  const limit = Number(usage?.tokens?.limit);
  return Number.isFinite(limit) && limit < minChatTokens;
}

// Which refusal a 429 is: "too_long" (a shorter message still fits) or "spent" (nothing does).
// The chat says so in `details[0].reason`, decided against its real prompt and tools. Only an
// answer without it falls back to a guess: when what is left is too little for any reply, or
// the conversation sent was small beside it, the allowance is spent; otherwise this one request
// was too big. `sentChars` is the size of what was sent (about four characters a token).
export function limitKind(usage, sentChars, minChatTokens, details = null) {
  const reason = Array.isArray(details) ? details[0]?.reason : undefined;
  if (reason === "message_too_long") return "too_long";
  if (reason === "allowance_spent") return "spent";
  const remaining = Number(usage?.tokens?.remaining);
  if (!Number.isFinite(remaining) || remaining < minChatTokens) return "spent";
  return sentChars / 4 >= remaining / 2 ? "too_long" : "spent";
}

export function tooLongNotice(usage) {
  const remaining = formatTokens(usage?.tokens?.remaining);
  return {
    title: `This message is too long for the ${remaining} tokens left`,
    text: "Shorten it, or start a new chat so that less of the conversation is sent with it.",
  };
}

export function demoNotice(usage) {
  const plan = planName(usage?.plan) || "Demo";
  const limit = formatTokens(usage?.tokens?.limit);
  return {
    title: `The ${plan} plan cannot chat`,
    text:
      `Its allowance of ${limit} tokens a month is too small for any reply: even a short ` +
      "question and its answer use more. Pick a plan below: you pay on a secure checkout " +
      "page and come straight back here to chat.",
  };
}

export function planTokens(tokens) {
  return `${formatTokens(tokens)} tokens a month`;
}

export function purchaseLabel(item, kind) {
  const price = formatPrice(item?.price);
  if (kind === "plan") {
    return `Choose ${item.name}: ${planTokens(item.tokens)}${price ? ` for ${price} a month` : ""}`;
  }
  return `Buy ${formatTokens(item.tokens)} tokens once${price ? ` for ${price}` : ""}`;
}

// What the page says about a Checkout it was sent back from.
export function checkoutMessage(phase, purchase, usage) {
  const tokens = usage?.tokens ?? {};
  if (phase === "cancelled") {
    return { title: "Checkout cancelled", text: "Nothing was charged." };
  }
  if (phase === "confirming") {
    return {
      title: "Payment received: confirming it",
      text: "Your new allowance appears here as soon as the payment is confirmed.",
    };
  }
  if (phase === "returned") {
    return {
      title: "Back from checkout",
      text: "The meter shows a purchase as soon as its payment is confirmed; this can take a minute.",
    };
  }
  if (phase === "confirmed") {
    const text =
      purchase?.kind === "topup"
        ? `${formatTokens(purchase.tokens)} tokens were added. You have ${formatTokens(tokens.remaining)} tokens to use.`
        : `You are on the ${planName(usage?.plan)} plan: ${formatTokens(tokens.remaining)} tokens to use this period.`;
    return { title: "Payment confirmed", text };
  }
  return {
    title: "Your payment is not confirmed yet",
    text:
      "This can take a minute. Nothing is lost: the meter updates when the confirmation " +
      "arrives. Check again in a moment, or reload the page later.",
  };
}

// Threshold alerts (75, 90, 100 %) each name a level; the page shows the one of the current level
// and treats those of lower levels as superseded, so the same news is never shown twice.
const THRESHOLD_LEVELS = { 75: "warning", 90: "critical", 100: "exceeded" };

function noticeLevel(notice) {
  return LEVELS.includes(notice?.level) ? notice.level : THRESHOLD_LEVELS[notice?.threshold];
}

export function currentAlert(usage, dismissed) {
  const level = levelOf(usage);
  const notices = Array.isArray(usage?.notices) ? usage.notices : [];
  const ofLevel = notices.filter((notice) => notice?.id && noticeLevel(notice) === level);
  return {
    alert: ofLevel.find((notice) => !dismissed.has(String(notice.id))) ?? null,
    dismissed: ofLevel.length > 0 && ofLevel.every((notice) => dismissed.has(String(notice.id))),
  };
}
