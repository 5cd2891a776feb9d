// Runs the pinned appwrite-cli's own comparison (lib/commands/push.js: the helpers of
// `attributesToCreate` and its first lines, taken from the file's text and evaluated unchanged)
// on a config file and the server's table documents, and prints what `push tables` would do.
//
//   node cli_push_compare.js <appwrite-cli folder> <config.json> <remote-tables.json>
//
// Both files are parsed with the CLI's own JSON parser (json-bigint, as lib/config.js and
// lib/client.js parse them). Output: {"<tableId>": {"columns": {...}, "indexes": {...}}} where
// each holds the keys the CLI would be deleting, adding, recreating (conflicts) and changing.
"use strict";

const fs = require("fs");
const path = require("path");
const vm = require("vm");

const [cliRoot, configPath, remotePath] = process.argv.slice(2).map((arg) => path.resolve(arg));
const JSONbig = require(require.resolve("json-bigint", { paths: [cliRoot] }))({
  storeAsString: false,
});
const { KeysAttributes } = require(path.join(cliRoot, "lib", "config.js"));
const source = fs.readFileSync(path.join(cliRoot, "lib", "commands", "push.js"), "utf8");

// One top-level `const name = ...` declaration, up to the next top-level statement or comment.
function declaration(name) {
  const start = source.indexOf(`\nconst ${name} = `);
  if (start < 0) throw new Error(`push.js declares no ${name}`);
  const rest = source.slice(start + 1);
  const end = rest.slice(1).search(/\n(const |let |\/\*\*|\/\/)/);
  return end < 0 ? rest : rest.slice(0, end + 1);
}

// `attributesToCreate` up to where it starts printing and calling the server.
function planLines() {
  const head = "const attributesToCreate = async (remoteAttributes, localAttributes, collection, isIndex = false) => {";
  const start = source.indexOf(head);
  const stop = source.indexOf("let changedAttributes = [];", start);
  if (start < 0 || stop < 0) throw new Error("push.js has another attributesToCreate");
  return source.slice(start + head.length, stop);
}

// Colours are for a terminal; the comparison only needs the text.
const plain = new Proxy(function () {}, {
  get: () => plain,
  // chalk 4 shows one argument as `"" + value` (so undefined reads "undefined").
  apply: (_target, _this, args) => (args.length === 1 ? "" + args[0] : args.join(" ")),
});
const names = ["changeableKeys", "isEmpty", "isEqual", "compareAttribute", "checkAttributeChanges",
  "attributesContains", "generateChangesObject"];
const program = [
  ...names.map(declaration),
  `const plan = (remoteAttributes, localAttributes, collection, isIndex) => {${planLines()}
    return { deleting, adding, conflicts, changes };
  };`,
  "plan;",
].join("\n");
const plan = vm.runInNewContext(program, { KeysAttributes, chalk: plain, console, Number, JSON });

const config = JSONbig.parse(fs.readFileSync(configPath, "utf8"));
const remoteTables = JSONbig.parse(fs.readFileSync(remotePath, "utf8"));
const found = {};
for (const remote of remoteTables) {
  const local = (config.tables || []).find(
    (table) => table.$id === remote.$id && table.databaseId === remote.databaseId,
  );
  if (!local) continue;
  const result = {};
  for (const kind of ["columns", "indexes"]) {
    const { deleting, adding, conflicts, changes } = plan(
      remote[kind] || [], local[kind] || [], local, kind === "indexes",
    );
    const key = (change) => change.attribute.key;
    result[kind] = {
      deleting: deleting.map(key),
      adding: adding.map(key),
      recreating: Object.fromEntries(conflicts.map((c) => [c.attribute.key, c.reason])),
      changing: Object.fromEntries(changes.map((c) => [c.attribute.key, c.reason])),
    };
  }
  found[remote.$id] = result;
}
process.stdout.write(JSON.stringify(found));
