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
  if (level === "warning") {
    return {
      level,
      title: `You've used ${percent} of this month's tokens`,
      text: `${remaining} tokens left. Your allowance resets ${reset}.`,
    };
  }
  if (level === "critical") {
    return {
      level,
      title: `Almost out of tokens: ${percent} used`,
      text: `Only ${remaining} tokens left, so long replies may be cut short. Your allowance resets ${reset}.`,
    };
  }
  return null;
}

export function limitNotice(usage) {
  const tokens = usage?.tokens ?? {};
  const plan = planName(usage?.plan);
  const paused = `Chat is paused until your allowance resets ${resetPhrase(usage)}.`;
  if (tokens.remaining > 0) {
    // Refused before the bar is full: what is left cannot pay for even a short reply.
    return {
      title: "Monthly token limit reached",
      text: `The ${formatTokens(tokens.remaining)} tokens left this period are too few for another reply. ${paused}`,
    };
  }
  const allowance = tokens.limit ? `all ${formatTokens(tokens.limit)} tokens` : "all your tokens";
  return {
    title: "Monthly token limit reached",
    text: `You've used ${allowance}${plan ? ` of your ${plan} plan` : ""} for this period. ${paused}`,
  };
}

export function messageBreakdown(usage) {
  return [
    ["Input", formatTokens(usage?.inputTokens)],
    ["Cache write", formatTokens(usage?.cacheCreationInputTokens)],
    ["Cache read", formatTokens(usage?.cacheReadInputTokens)],
    ["Output", formatTokens(usage?.outputTokens)],
    ["Steps", formatTokens(usage?.steps)],
    ["Cost", formatCost(usage?.costUsd)],
  ];
}
