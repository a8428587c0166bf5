// aircall-segment console: small conveniences over server-rendered pages. No library, no build step.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // The status panel refreshes itself every few seconds.
  const live = document.getElementById("status-live");
  if (live) {
    const every = Number(live.dataset.every || 5) * 1000;
    const refresh = async () => {
      try {
        const answer = await fetch(live.dataset.src, { credentials: "same-origin", cache: "no-store" });
        if (answer.status === 401) { window.location.reload(); return; }
        if (answer.ok) {
          const parsed = new DOMParser().parseFromString(await answer.text(), "text/html");
          live.replaceChildren(...parsed.body.childNodes);
        }
      } catch (error) { /* the server is restarting: try again at the next tick */ }
      setTimeout(refresh, every);
    };
    setTimeout(refresh, every);
  }

  // A table row opens its page when clicked anywhere (its first cell holds a plain link too).
  document.querySelectorAll("tr[data-href]").forEach((row) => {
    row.addEventListener("click", (event) => {
      if (event.target.closest("a, button, form, details")) return;
      window.location.href = row.dataset.href;
    });
  });

  // Forms that delete or replay ask first.
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
  });
});
