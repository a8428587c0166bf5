"""The deployment: the shipped nginx site (deploy/nginx-aircall-segment.conf) in front of `engine serve`,
with TLS, forwarded headers and nginx's own body limit. Needs the distribution's nginx (CI installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.harness import Process, count, expected_ids, free_port, sample, wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.fixture
def nginx(tmp_path, engine_server):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx): the proxy deployment is not tested")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make the test certificate")
    server = engine_server()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    http_port, https_port = free_port(), free_port()
    site = (ROOT / "deploy" / "nginx-aircall-segment.conf").read_text()
    replacements = {
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{server.port};",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "bridge.example.com": "localhost",
        "/etc/letsencrypt/live/localhost/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/localhost/privkey.pem": str(key),
        "/etc/nginx/aircall-segment.htpasswd": str(tmp_path / "htpasswd"),
    }
    (tmp_path / "htpasswd").write_text("operator:{PLAIN}console-password\n")
    for old, new in replacements.items():
        assert old in site, f"the shipped site no longer has {old!r}: update this test"
        site = site.replace(old, new)
    (tmp_path / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read the test's private folder
    (tmp_path / "nginx.conf").write_text(f"""
        {user}
        daemon off;
        worker_processes 1;
        pid {tmp_path}/nginx.pid;
        error_log {tmp_path}/nginx-error.log warn;
        events {{ worker_connections 256; }}
        http {{
            access_log {tmp_path}/nginx-access.log;
            client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
            fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
            include {tmp_path}/site.conf;
        }}
    """)
    checked = subprocess.run([NGINX, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    proxy = Process([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)], os.environ.copy(),
                    tmp_path / "nginx.log").start()  # fmt: skip
    base = f"https://localhost:{https_port}"
    wait_for(lambda: requests.get(f"{base}/nope", verify=str(cert), timeout=1).status_code == 404, what="nginx")
    yield {"base": base, "http": f"http://localhost:{http_port}", "cert": str(cert), "server": server}
    proxy.stop()


def test_webhook_flow_through_nginx_with_tls(nginx, segment):
    post = {"verify": nginx["cert"], "timeout": 10, "headers": {"Content-Type": "application/json",
                                                                  "X-Forwarded-For": "203.0.113.7"}}  # fmt: skip
    answer = requests.post(f"{nginx['base']}/webhooks/aircall", json=sample("call.ended"), **post)
    assert (answer.status_code, answer.json()) == (200, {"status": "accepted"})
    segment.wait_for_ids(set(expected_ids(sample("call.ended"))))
    wrong = requests.post(f"{nginx['base']}/webhooks/aircall", json={**sample("call.ended"), "token": "x"}, **post)
    assert wrong.status_code == 401  # the app's answers pass through unchanged
    # uvicorn trusts nginx's X-Forwarded-For (--forwarded-allow-ips 127.0.0.1): the webhook's log line names the
    # real client.
    wait_for(lambda: "client=203.0.113.7" in nginx["server"].process.log, what="forwarded client address in the log")
    count("nginx: webhooks through the proxy", 2)


def test_oversized_body_is_refused_by_nginx_before_the_app(nginx):
    big = b'{"padding": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    answer = requests.post(f"{nginx['base']}/webhooks/aircall", data=big, verify=nginx["cert"], timeout=10,
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 413
    assert "too_large" not in nginx["server"].metrics()  # nginx answered; the app never read it


def test_plain_http_redirects_and_only_post_reaches_the_webhook(nginx):
    redirect = requests.post(f"{nginx['http']}/webhooks/aircall", allow_redirects=False, timeout=5)
    assert redirect.status_code == 301 and redirect.headers["Location"].startswith("https://localhost/")
    assert requests.get(f"{nginx['base']}/webhooks/aircall", verify=nginx["cert"], timeout=5).status_code == 403
    assert requests.get(f"{nginx['base']}/metrics", verify=nginx["cert"], timeout=5).status_code == 404
    # Health and readiness reach the app from the allowed address (this test's: 127.0.0.1), for monitoring.
    for path, answer in [("/healthz", "ok"), ("/readyz", "ready")]:
        assert requests.get(f"{nginx['base']}{path}", verify=nginx["cert"], timeout=5).json()["status"] == answer
    slash = requests.post(f"{nginx['base']}/webhooks/aircall/", json={**sample("call.ended"), "token": "x"},
                          verify=nginx["cert"], timeout=5)  # fmt: skip
    assert slash.status_code == 401  # the app's answer: the path with a slash reaches the gateway too


def test_no_redirect_of_nginx_names_the_host_a_request_gave(nginx):
    hostile = {"Host": "evil.example"}
    plain = requests.get(f"{nginx['http']}/anything", headers=hostile, allow_redirects=False, timeout=5)
    assert plain.status_code == 301 and plain.headers["Location"] == "https://localhost/anything"
    console = requests.get(f"{nginx['base']}/console", headers=hostile, verify=nginx["cert"], allow_redirects=False,
                           timeout=5)  # fmt: skip
    assert console.status_code == 301 and console.headers["Location"] == "/console/"


def test_the_console_is_behind_nginx_basic_auth_and_allow_list(nginx):
    console = f"{nginx['base']}/console/"
    refused = requests.get(console, verify=nginx["cert"], timeout=5)
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]  # nginx's, before the app
    wrong = requests.get(console, verify=nginx["cert"], timeout=5, auth=("operator", "guess"))
    assert wrong.status_code == 401
    # Through both locks, the request reaches the app: here without ENGINE_CONSOLE_TOKEN, so the app's 404.
    passed = requests.get(console, verify=nginx["cert"], timeout=5, auth=("operator", "console-password"))
    assert (passed.status_code, passed.text) == (404, "Not Found")
