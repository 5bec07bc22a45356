// Exercises the page `envsynth view --html` writes, in jsdom, against the run's rollouts.jsonl
// read here on its own: node view_page.mjs PAGE ROLLOUTS_JSONL [STATUS], STATUS when the page
// was written with `--status STATUS`.
//
// Checks: the Content-Security-Policy names the hashes of the page's one style and one script;
// nothing else can run or load (no other script, no event-handler attribute, no external
// reference); every rollout is there with its status; each message's text reads back exactly
// as the policy wrote it (escaped once, not twice); and the filters (status, failed check,
// search, the failed-checks table's links) show exactly the rollouts they should.
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { JSDOM } from "jsdom";

const [page, jsonl, only] = process.argv.slice(2);
const html = readFileSync(page, "utf8");
const rollouts = readFileSync(jsonl, "utf8").split("\n").filter((l) => l).map((l) => JSON.parse(l));
const dom = new JSDOM(html, { runScripts: "dangerously" });
const doc = dom.window.document;

function fail(why) {
  console.error("view page: " + why);
  process.exit(1);
}
function same(a, b, what) {
  const x = JSON.stringify(a), y = JSON.stringify(b);
  if (x !== y) fail(`${what}: ${x} != ${y}`);
}

// Only the page's own style and script, by hash.
const csp = doc.querySelector('meta[http-equiv="Content-Security-Policy"]').getAttribute("content");
const hash = (t) => "'sha256-" + createHash("sha256").update(t, "utf8").digest("base64") + "'";
const styles = doc.querySelectorAll("style"), scripts = doc.querySelectorAll("script");
same([styles.length, scripts.length], [1, 1], "style and script elements");
same(csp, `default-src 'none'; style-src ${hash(styles[0].textContent)}; script-src ${hash(scripts[0].textContent)}`, "CSP");
for (const el of doc.querySelectorAll("*")) {
  for (const attr of el.attributes) {
    if (attr.name.startsWith("on")) fail(`event handler attribute ${attr.name} on <${el.tagName}>`);
    if (["src", "srcset", "action", "formaction", "background", "poster"].includes(attr.name)) fail(`${attr.name} on <${el.tagName}>`);
    if (attr.name === "href" && attr.value !== "#") fail(`href ${attr.value}`);
  }
  if (["IMG", "IFRAME", "OBJECT", "EMBED", "LINK", "BASE", "SVG", "VIDEO", "AUDIO"].includes(el.tagName.toUpperCase())) fail(`<${el.tagName}> element`);
}

// Text as the page shows it: control characters other than newline and tab, and the
// bidirectional controls, as visible \u{..} escapes; everything else exactly as written.
const visible = (s) => s.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
  (c) => "\\u{" + c.codePointAt(0).toString(16) + "}");

// Every rollout, in order, with its status and messages.
const rows = Array.from(doc.querySelectorAll("details.rollout"));
const status = (r) => (r.verdict.mask ? "masked" : r.verdict.passed ? "passed" : "failed");
const onPage = rollouts.flatMap((r, i) => (!only || status(r) === only ? [[r, i + 1]] : []));
same(rows.map((row) => row.id), onPage.map(([, n]) => "r" + n), "rollout rows");
same(rows.map((row) => row.dataset.status), onPage.map(([r]) => status(r)), "statuses");
onPage.forEach(([r, n], i) => {
  const texts = Array.from(rows[i].querySelectorAll(".msg")).map((m) => {
    const pre = m.querySelector(":scope > pre, :scope > details:not(.reasoning) > pre");
    return pre ? pre.textContent : null;
  });
  r.messages.forEach((m, j) => {
    if (m.content && m.role !== "tool" && texts[j] !== visible(m.content)) fail(`rollout ${n} message ${j}: ${JSON.stringify(texts[j])} != ${JSON.stringify(m.content)}`);
  });
  r.verdict.checks.forEach((c, j) => {
    const cells = rows[i].querySelectorAll("table.checks tr")[j].querySelectorAll("td");
    same([cells[1].textContent, cells[2].textContent], [visible(c.id), visible(c.reason)], `rollout ${n} check ${j}`);
  });
});

// The filters.
const byId = (id) => doc.getElementById(id);
const shown = () => rows.filter((row) => !row.hidden).map((row) => row.id);
const lines = (keep) => onPage.flatMap(([r, n]) => (keep(r) ? ["r" + n] : []));
function set(id, value, event) {
  byId(id).value = value;
  byId(id).dispatchEvent(new dom.window.Event(event));
}
same(shown(), lines(() => true), "nothing filtered");
same(byId("shown").textContent, `${rows.length} of ${rows.length} shown`, "count");
for (const s of only ? [only] : ["passed", "failed", "masked"]) {
  set("f-status", s, "change");
  same(shown(), lines((r) => status(r) === s), `status ${s}`);
}
set("f-status", "", "change");
const failedCheck = (r, id) => r.verdict.checks.some((c) => c.id === id && c.status === "failed");
const links = Array.from(doc.querySelectorAll("a.check"));
for (const a of links) {
  a.dispatchEvent(new dom.window.MouseEvent("click", { bubbles: true, cancelable: true }));
  same(byId("f-check").value, a.dataset.check, "a check link sets the filter");
  same(shown(), lines((r) => failedCheck(r, a.dataset.check)), `check ${a.dataset.check}`);
}
set("f-check", "", "change");
const task = onPage[onPage.length - 1][0].task_id;
set("f-text", task.toUpperCase(), "input");
same(shown(), lines((r) => r.task_id === task), "search for a task id");
set("f-text", "", "input");
same(shown(), lines(() => true), "filters cleared");
console.log(`view page: ${rows.length} rollouts, ${links.length} check links, filters and CSP as expected`);
