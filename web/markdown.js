// Replies as Markdown: parsed by marked, sanitised by DOMPurify, returned as DOM nodes (the page
// never assigns HTML strings). Raw HTML in a reply is shown as text, links open in a new tab
// without access to this page, and only http(s) and mailto addresses stay links.

import DOMPurify from "./vendor/purify.js";
import { Marked } from "./vendor/marked.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (char) => ESCAPES[char]);

const parser = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    // The model quoting markup (or a prompt injection writing some) is text to read, not to run.
    html: ({ text }) => escapeHtml(text),
    // An image would load an address the model chose as soon as the reply shows (a tracking
    // pixel, or data leaking through its query): it becomes a link the reader may follow.
    image: ({ href, text }) => `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`,
  },
});

const purifier = DOMPurify(window);
const ALLOWED_TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
  "input", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
]; // prettier-ignore
const PURIFY_OPTIONS = {
  ALLOWED_TAGS,
  // class carries a code block's language; align a table column's; the rest are task lists.
  ALLOWED_ATTR: ["href", "title", "class", "align", "start", "type", "checked", "disabled"],
  // DOMPurify checks every attribute not known as URI-safe against the address pattern: these
  // carry words ("right", "checkbox"), never addresses.
  ADD_URI_SAFE_ATTR: ["align", "start", "type"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  RETURN_DOM_FRAGMENT: true,
};

purifier.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
  // marked writes inputs only as a task list's checkboxes: read-only marks, never controls.
  if (node.nodeName === "INPUT") node.setAttribute("disabled", "");
  if (node.hasAttribute("class") && !/^language-[\w+#.-]{1,40}$/.test(node.getAttribute("class"))) {
    node.removeAttribute("class");
  }
});

// A task list's checkboxes need a name for assistive technology; the item's text is it.
function labelCheckboxes(fragment) {
  for (const box of fragment.querySelectorAll("input[type=checkbox]")) {
    const item = box.closest("li");
    box.setAttribute("aria-label", item ? item.textContent.trim() : "task");
  }
}

function codeBlock(pre) {
  const code = pre.querySelector("code");
  const language = /^language-(.+)$/.exec(code?.getAttribute("class") ?? "")?.[1] ?? "";
  const wrapper = document.createElement("div");
  wrapper.className = "code-block";
  wrapper.dataset.testid = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const label = document.createElement("span");
  label.className = "code-language";
  label.textContent = language || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-button";
  copy.dataset.testid = "copy-code";
  copy.dataset.copy = "code";
  copy.setAttribute("aria-label", language ? `Copy ${language} code` : "Copy code");
  copy.textContent = "Copy";
  head.append(label, copy);
  pre.replaceWith(wrapper);
  // The code scrolls sideways inside its box, never the page; a keyboard user reaches it to
  // scroll it too.
  pre.tabIndex = 0;
  wrapper.append(head, pre);
}

function scrollableTable(table) {
  const wrapper = document.createElement("div");
  wrapper.className = "table-wrap";
  wrapper.tabIndex = 0;
  wrapper.setAttribute("role", "group");
  wrapper.setAttribute("aria-label", "Table");
  table.replaceWith(wrapper);
  wrapper.append(table);
}

// The reply as a fragment of safe nodes.
export function renderMarkdown(text) {
  const html = parser.parse(String(text ?? ""), { async: false });
  const fragment = purifier.sanitize(html, PURIFY_OPTIONS);
  for (const pre of [...fragment.querySelectorAll("pre")]) codeBlock(pre);
  for (const table of [...fragment.querySelectorAll("table")]) scrollableTable(table);
  labelCheckboxes(fragment);
  return fragment;
}

// Copy a code block's text; a browser without the async clipboard (an insecure origin) falls
// back to a hidden selection.
export async function copyText(text) {
  if (navigator.clipboard?.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // Denied (no permission, not focused): try the selection below.
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  let done = false;
  try {
    done = document.execCommand("copy");
  } catch {
    done = false;
  }
  area.remove();
  return done;
}
