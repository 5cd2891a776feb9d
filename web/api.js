// The page's only door to the backend: Appwrite Account and function executions, with every
// failure turned into an ApiError whose `kind` tells the page what to do.

import {
  Account,
  AppwriteException,
  Client,
  Functions,
  ID,
  Realtime,
} from "./vendor/appwrite.js";

export const ErrorKind = Object.freeze({
  AUTH: "auth", // not (or no longer) logged in: back to the login form
  LIMIT: "limit", // 429: the allowance is used up; `usage` carries the figures
  RETRYABLE: "retryable", // network, timeout, 5xx: the same request may succeed later
  TOO_LARGE: "too_large", // 413: the conversation no longer fits in one request
  INVALID: "invalid", // any other 4xx: retrying the same thing will not help
  NOT_FOUND: "not_found", // 404 of a turn: not started yet, refused, or not the caller's
});

export class ApiError extends Error {
  constructor(kind, message, { status = 0, code = "", usage = null, details = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.usage = usage;
    this.details = details;
  }
}

const NETWORK_MESSAGE = "Couldn't reach the server. Check your connection and try again.";
const SERVER_MESSAGE = "The assistant is having trouble right now. Please try again.";

export async function loadConfig(url = "config.json") {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`config.json answered ${response.status}`);
  const config = await response.json();
  if (typeof config?.endpoint !== "string" || typeof config?.projectId !== "string") {
    throw new Error("config.json needs an endpoint and a projectId");
  }
  return {
    endpoint: new URL(config.endpoint, window.location.href).href.replace(/\/$/, ""),
    projectId: config.projectId,
    offlineModel: config.offlineModel === true,
    // The chat function accepts 50 messages by default (CHAT_MAX_MESSAGES).
    historyMessages: Number.isInteger(config.historyMessages) ? config.historyMessages : 40,
    // Below this many tokens of allowance no reply is possible (the system prompt, the tool
    // definitions and a minimal answer cost more): the Demo plan's 30 tokens, for instance.
    minChatTokens: Number.isInteger(config.minChatTokens) ? config.minChatTokens : 256,
    // What a reply cost in dollars is the operator's figure; users see tokens unless told so.
    showCost: config.showCost === true,
    functions: { chat: "chat", usage: "usage", billing: "billing", ...(config.functions ?? {}) },
    // Where Realtime finds the rows the page follows: the user's account row and turn rows.
    databaseId: typeof config.databaseId === "string" ? config.databaseId : "koffers_db",
    tables: { subscriptions: "subscriptions", turns: "turns", ...(config.tables ?? {}) },
  };
}

function parseJson(text) {
  if (typeof text !== "string" || text === "") return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

// Errors thrown by the SDK itself: the execution never reached the function.
function transportError(error) {
  if (error instanceof AppwriteException && error.code === 401) {
    return new ApiError(ErrorKind.AUTH, "Your session has ended. Please log in again.", {
      status: 401,
      code: error.type ?? "",
    });
  }
  if (error instanceof AppwriteException && error.code >= 400 && error.code < 500) {
    if (error.code === 429) {
      // Appwrite's own rate limit, not the token allowance: waiting helps.
      return new ApiError(ErrorKind.RETRYABLE, "Too many requests. Wait a moment and try again.", {
        status: 429,
      });
    }
    return new ApiError(ErrorKind.INVALID, error.message || "The request was refused.", {
      status: error.code,
      code: error.type ?? "",
    });
  }
  const status = error instanceof AppwriteException ? error.code : 0;
  return new ApiError(ErrorKind.RETRYABLE, status ? SERVER_MESSAGE : NETWORK_MESSAGE, { status });
}

function rateLimitMessage(error) {
  const seconds = Number.isInteger(error?.retryAfter) && error.retryAfter > 0 ? error.retryAfter : 2;
  const wait = seconds === 1 ? "a second" : `${seconds} seconds`;
  if (error?.details?.[0]?.reason === "requests_per_minute") {
    return `You've sent many messages in the last minute. Wait ${wait} and send it again.`;
  }
  return `Your other messages are still being answered. Wait ${wait} and send this one again.`;
}

// The function's own answer, carried inside the execution object.
function functionError(status, body) {
  const code = body?.error?.code ?? "";
  const message = body?.error?.message;
  if (status === 401) {
    return new ApiError(ErrorKind.AUTH, "Your session has ended. Please log in again.", {
      status,
      code,
    });
  }
  if (status === 429 && code === "rate_limited") {
    // The user's pace, not the allowance: the same message goes through after the wait.
    return new ApiError(ErrorKind.RETRYABLE, rateLimitMessage(body.error), { status, code });
  }
  if (status === 429) {
    return new ApiError(ErrorKind.LIMIT, message || "Monthly token limit reached.", {
      status,
      code,
      usage: body?.usage ?? null,
      // The chat's 429 says which refusal it is: details[0].reason.
      details: Array.isArray(body?.error?.details) ? body.error.details : null,
    });
  }
  if (status === 404) {
    return new ApiError(ErrorKind.NOT_FOUND, message || "Not found.", { status, code });
  }
  if (status === 413) {
    return new ApiError(
      ErrorKind.TOO_LARGE,
      "This conversation is too long to send. Start a new chat to continue.",
      { status, code },
    );
  }
  if (status === 408 || status === 409 || status >= 500 || status === 0) {
    // 408: the synchronous execution timed out; 409: the same request is still running.
    const text =
      status === 409
        ? "Still working on your previous message. Try again in a moment."
        : SERVER_MESSAGE;
    return new ApiError(ErrorKind.RETRYABLE, text, { status, code });
  }
  return new ApiError(ErrorKind.INVALID, message || "The request was refused.", { status, code });
}

const BILLING_UNAVAILABLE =
  "Billing is unavailable right now and nothing was charged. Please try again in a moment.";

// The billing function's answers, worded for the action the user took.
function billingError(action, status, body) {
  const code = body?.error?.code ?? "";
  if (status === 401) return functionError(status, body);
  if (status === 409) {
    const text = {
      portal: "There is no billing account to manage yet: it is created with your first purchase.",
      plan: "You already have this plan. Use Manage billing to change or cancel it.",
    }[action];
    return new ApiError(ErrorKind.INVALID, text ?? body?.error?.message ?? "Already done.", {
      status,
      code,
    });
  }
  if (status === 400 || status === 404) {
    const text =
      action === "plans"
        ? "The plans could not be loaded."
        : "This plan or pack is no longer offered. Reload the page to see the current ones.";
    return new ApiError(ErrorKind.INVALID, text, { status, code });
  }
  if (status === 408 || status === 429 || status >= 500 || status === 0) {
    return new ApiError(ErrorKind.RETRYABLE, BILLING_UNAVAILABLE, { status, code });
  }
  return new ApiError(ErrorKind.INVALID, body?.error?.message || "The request was refused.", {
    status,
    code,
  });
}

// Checkout and portal answers are followed with a navigation: only an http(s) address is.
function redirectUrl(answer) {
  try {
    const url = new URL(String(answer?.url ?? ""), window.location.href);
    if (url.protocol === "https:" || url.protocol === "http:") return url.href;
  } catch {
    // Fall through: an answer without a usable address.
  }
  throw new ApiError(ErrorKind.RETRYABLE, BILLING_UNAVAILABLE, { status: 502 });
}

export function createBackend(config) {
  const client = new Client().setEndpoint(config.endpoint).setProject(config.projectId);
  const account = new Account(client);
  const functions = new Functions(client);

  async function createExecution(functionId, method, body, path, isAsync, toTransportError) {
    try {
      return await functions.createExecution(
        functionId,
        body === undefined ? "" : JSON.stringify(body),
        isAsync,
        path,
        method,
        { "content-type": "application/json" },
      );
    } catch (error) {
      throw toTransportError(error);
    }
  }

  async function execute(
    functionId,
    method,
    body,
    { path = "/", toError = functionError, toTransportError = transportError } = {},
  ) {
    const execution = await createExecution(functionId, method, body, path, false, toTransportError);
    const status = Number(execution?.responseStatusCode ?? 0);
    const parsed = parseJson(execution?.responseBody);
    if (status >= 200 && status < 300 && parsed !== null) return parsed;
    throw toError(status >= 200 && status < 300 ? 502 : status, parsed);
  }

  let realtime = null;
  const onReconnect = [];

  // One socket for every subscription of the page; after it was lost and opens again, the
  // page reads what it may have missed.
  function connection() {
    if (realtime === null) {
      realtime = new Realtime(client);
      let opened = 0;
      realtime.onOpen(() => {
        opened += 1;
        if (opened > 1) for (const callback of onReconnect) callback();
      });
    }
    return realtime;
  }

  const rowsChannel = (table) => `tablesdb.${config.databaseId}.tables.${table}.rows`;

  const billing = (action, method, path, body) =>
    execute(config.functions.billing, method, body, {
      path,
      toError: (status, parsed) => billingError(action, status, parsed),
      // Appwrite's own refusals (no such function, not allowed to run it) are not the user's to
      // fix: to them billing is simply unavailable.
      toTransportError: (error) => {
        const mapped = transportError(error);
        if (mapped.kind !== ErrorKind.INVALID) return mapped;
        return new ApiError(ErrorKind.RETRYABLE, BILLING_UNAVAILABLE, { status: mapped.status });
      },
    });

  async function accountCall(call) {
    try {
      return await call();
    } catch (error) {
      if (error instanceof AppwriteException && error.code >= 400 && error.code < 500) {
        throw new ApiError(
          error.code === 401 ? ErrorKind.AUTH : ErrorKind.INVALID,
          error.message || "The request was refused.",
          { status: error.code, code: error.type ?? "" },
        );
      }
      throw transportError(error);
    }
  }

  return {
    currentUser: () => accountCall(() => account.get()),
    logIn: (email, password) =>
      accountCall(() => account.createEmailPasswordSession(email, password)),
    signUp: (email, password, name) =>
      accountCall(() => account.create(ID.unique(), email, password, name || undefined)),
    logOut: () => accountCall(() => account.deleteSession("current")),
    chat: (messages, requestId) => execute(config.functions.chat, "POST", { messages, requestId }),
    // A turn: an asynchronous execution answered at once; the reply arrives in the turn's row.
    startTurn: (messages, requestId) =>
      createExecution(
        config.functions.chat,
        "POST",
        { messages, requestId },
        "/",
        true,
        transportError,
      ),
    // {turn, usage} of one of the caller's turns; NOT_FOUND before it exists.
    turn: (requestId) =>
      execute(config.functions.chat, "GET", undefined, {
        path: `/turns/${encodeURIComponent(requestId)}`,
      }),
    stopTurn: (requestId) =>
      execute(config.functions.chat, "POST", {}, {
        path: `/turns/${encodeURIComponent(requestId)}/stop`,
      }),
    // What became of an asynchronous execution: null while it is queued or running.
    executionOutcome: async (executionId) => {
      let execution;
      try {
        execution = await functions.getExecution(config.functions.chat, executionId);
      } catch (error) {
        throw transportError(error);
      }
      return outcomeOf(execution);
    },
    // Every turn row and the account row of the user, as Realtime delivers them to their reader.
    follow: async ({ onTurn, onAccount, onReconnected }) => {
      onReconnect.push(onReconnected);
      const socket = connection();
      await socket.subscribe(
        [rowsChannel(config.tables.turns), rowsChannel(config.tables.subscriptions)],
        (event) => {
          const table = event?.payload?.$tableId;
          const channels = Array.isArray(event?.channels) ? event.channels : [];
          const isTurn =
            table === config.tables.turns ||
            channels.includes(rowsChannel(config.tables.turns)) ||
            typeof event?.payload?.requestId === "string";
          if (isTurn) onTurn(event.payload);
          else onAccount(event?.payload ?? null);
        },
      );
    },
    unfollow: async () => {
      onReconnect.length = 0;
      const socket = realtime;
      realtime = null;
      if (socket !== null) await socket.disconnect();
    },
    usage: () => execute(config.functions.usage, "GET"),
    // GET /plans: {plans: [{id, name, tokens, price, current}], topups: [...], currentPlan}.
    plans: () => billing("plans", "GET", "/plans"),
    // `purchase` is {plan: id} or {topup: id}; the answer is the Checkout page to go to.
    checkout: async (purchase) =>
      redirectUrl(await billing(purchase.plan ? "plan" : "topup", "POST", "/checkout", purchase)),
    portal: async () => redirectUrl(await billing("portal", "POST", "/portal", {})),
  };
}

// The answer an execution document carries once it has run: {status, body}, or null before.
// An asynchronous execution on Appwrite keeps the status code but not the body (body null).
export function outcomeOf(execution) {
  const state = execution?.status;
  const status = Number(execution?.responseStatusCode ?? 0);
  if ((state !== "completed" && state !== "failed") || !status) {
    return state === "failed" ? { status: 500, body: null } : null;
  }
  return { status, body: parseJson(execution?.responseBody) };
}

export function errorOf(status, body) {
  return functionError(status, body);
}

// 36 characters from [A-Za-z0-9-]: what the chat function accepts as an idempotency key.
export function newRequestId() {
  if (window.crypto?.randomUUID) return window.crypto.randomUUID();
  const bytes = new Uint8Array(16);
  window.crypto.getRandomValues(bytes);
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}
