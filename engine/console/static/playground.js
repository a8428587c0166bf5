// The mapping playground: checks the edited mapping as you type (debounced), shows the findings with their line
// highlighted in the editor, and the Segment messages the webhook becomes. Every text from the server is set with
// textContent: a payload or a message is only ever text here.
"use strict";

const DEBOUNCE_MS = 250;

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("playground");
  if (!root) return;
  const editor = document.getElementById("editor");
  const backdrop = document.getElementById("backdrop");
  const gutter = document.getElementById("gutter");
  const payload = document.getElementById("payload");
  const sample = document.getElementById("sample");
  const findings = document.getElementById("findings");
  const messages = document.getElementById("messages");
  const note = document.getElementById("note");
  const timing = document.getElementById("timing");
  let marked = [];  // findings in the edited file: {line, column}
  let timer = null;
  let inFlight = null;
  let sequence = 0;

  const element = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  function paintEditor() {
    const lines = editor.value.split("\n");
    const bad = new Map(marked.map((m) => [m.line, m.column]));
    gutter.replaceChildren(...lines.map((_, i) => element("div", bad.has(i + 1) ? "bad" : "", String(i + 1))));
    const parts = [];
    lines.forEach((text, i) => {
      const column = bad.get(i + 1);
      if (column === undefined) {
        parts.push(document.createTextNode(text + "\n"));
        return;
      }
      const line = element("mark", "line");
      const at = Math.min(Math.max(column - 1, 0), text.length);
      line.append(document.createTextNode(text.slice(0, at)));
      line.append(element("mark", "column", text.slice(at, at + 1) || " "));
      line.append(document.createTextNode(text.slice(at + 1)));
      parts.push(line, document.createTextNode("\n"));
    });
    backdrop.replaceChildren(...parts);
    syncScroll();
  }

  function syncScroll() {
    backdrop.scrollTop = editor.scrollTop;
    backdrop.scrollLeft = editor.scrollLeft;
    gutter.scrollTop = editor.scrollTop;
  }

  function goTo(line, column) {
    const lines = editor.value.split("\n");
    let offset = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i += 1) offset += lines[i].length + 1;
    offset += Math.max(column - 1, 0);
    editor.focus();
    editor.setSelectionRange(offset, offset + 1);
  }

  function showFindings(answer) {
    const items = [];
    if (answer.stopped || answer.error) {
      items.push(element("li", "stopped", answer.stopped || answer.error));
    }
    for (const finding of answer.findings || []) {
      const item = element("li", finding.edited ? "edited" : "");
      item.append(element("span", "where", `${finding.file}:${finding.line}:${finding.column}`));
      item.append(document.createTextNode(": " + finding.message));
      if (finding.excerpt) item.append(element("pre", "", finding.excerpt));
      if (finding.edited) item.addEventListener("click", () => goTo(finding.line, finding.column));
      items.push(item);
    }
    if (!items.length) {
      const rendered = answer.samples === 1 ? "1 webhook" : `${answer.samples} webhooks`;
      items.push(element("li", "ok", `No findings: valid, and rendered without error against ${rendered} (the samples for its event and the payload).`));
    }
    findings.replaceChildren(...items);
    marked = (answer.findings || []).filter((f) => f.edited).map((f) => ({ line: f.line, column: f.column }));
    paintEditor();
  }

  function showMessages(answer) {
    note.textContent = answer.note || "";
    const shown = (answer.messages || []).map((message) => {
      const article = element("article");
      article.append(element("header", "", `${message.messageId} · ${message.bytes.toLocaleString()} bytes as sent`));
      article.append(element("pre", "json", message.pretty));
      return article;
    });
    messages.replaceChildren(...shown);
  }

  async function check() {
    sequence += 1;
    const mine = sequence;
    if (inFlight) inFlight.abort();
    inFlight = new AbortController();
    const body = JSON.stringify({ file: root.dataset.file, text: editor.value, payload: payload.value });
    let answer;
    try {
      const response = await fetch(root.dataset.check, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": root.dataset.csrf },
        body,
        signal: inFlight.signal,
      });
      if (response.status === 401) { window.location.reload(); return; }
      answer = await response.json();
    } catch (error) {
      if (error.name === "AbortError") return;
      answer = { stopped: "The server did not answer: " + error.message };
    }
    if (mine !== sequence) return;  // a newer edit is on its way
    showFindings(answer);
    showMessages(answer);
    timing.textContent = answer.milliseconds !== undefined ? `checked in ${answer.milliseconds} ms` : "";
    root.dataset.checked = String(mine);
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(check, DEBOUNCE_MS);
  }

  async function loadSample() {
    if (!sample.value) return;
    const url = `${root.dataset.samples}?name=${encodeURIComponent(sample.value)}`;
    const response = await fetch(url, { credentials: "same-origin" });
    if (response.ok) {
      payload.value = (await response.json()).payload;
      check();
    }
  }

  editor.addEventListener("input", () => { marked = []; paintEditor(); later(); });
  editor.addEventListener("scroll", syncScroll);
  editor.addEventListener("keydown", (event) => {  // Tab indents (two spaces, as YAML wants) instead of leaving
    if (event.key !== "Tab" || event.shiftKey) return;
    event.preventDefault();
    editor.setRangeText("  ", editor.selectionStart, editor.selectionEnd, "end");
    later();
  });
  payload.addEventListener("input", () => { sample.value = ""; later(); });
  sample.addEventListener("change", loadSample);
  paintEditor();
  check();
});
