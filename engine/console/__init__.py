"""The web console at /console (engine.console.app): status, recent webhooks, dead letters, a mapping playground.

auth: the token, the signed session cookie, CSRF. queries: what the pages show, from the outbox's console reads.
pages and templates/: server-rendered HTML, autoescaped. charts: SVG bars. playground and playground_worker:
checking an edited mapping with engine.mapping.validate in a child process under limits. static/: CSS and small
JavaScript, no library and nothing fetched from elsewhere.
"""
