"""A local stand-in for the Hugging Face Hub's upload API, on 127.0.0.1, for `factory export
--push` tests: what `huggingface_hub`'s create_repo and create_commit call, nothing more.

    with HubServer(token="hf_test") as hub:          # HF_ENDPOINT=hub.url for the command under test
        ...
        hub.files["me/data"]["README.md"]           # the bytes the last commits left there

- POST /api/validate-yaml: a card's YAML header against some of the Hub's metadata rules;
- POST /api/repos/create: creates the repository (409 when it exists, as the Hub answers;
  create_repo(exist_ok=True) accepts that), 401 without the bearer token;
- POST /api/datasets/USER/NAME/preupload/REV: every file is a regular upload (its content goes
  inline in the commit; the real Hub routes large files through large-file storage instead);
- POST /api/datasets/USER/NAME/commit/REV: the NDJSON commit: a header line, then one line per
  file with its base64 content; applied all or nothing. `fail_commits` answers that many
  commits with a 500 first (fault injection).
Every request is recorded in `requests` (method, path, status).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubServer:
    def __init__(self, token: str = "hf_test", fail_commits: int = 0):
        self.token, self.fail_commits = token, fail_commits
        self.repos: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.validated = 0  # README.md cards checked by /api/validate-yaml
        self._lock = threading.RLock()  # _send records under it, also from inside a locked section
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    SIZES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B", "n>1T"}

    def validate_card(self, req: dict) -> list[str]:
        """Some of the Hub's metadata rules for a dataset card's YAML header (not all of them)."""
        import yaml

        text = req.get("content") or ""
        if req.get("repoType") != "dataset" or not text.startswith("---\n"):
            return ["expected a dataset card starting with a YAML header"]
        meta = yaml.safe_load(text.split("---\n", 2)[1]) or {}
        errors = []
        if not isinstance(meta.get("license"), str):
            errors.append('"license" must be a string')
        if not set(meta.get("size_categories") or []) <= self.SIZES:
            errors.append(f'"size_categories" must be among {sorted(self.SIZES)}')
        for c in meta.get("configs") or []:
            if not c.get("config_name") or not all({"split", "path"} <= set(f) for f in c.get("data_files") or [{}]):
                errors.append('"configs" entries need config_name and data_files with split and path')
        return errors

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with hub._lock:
                    hub.requests.append((self.command, self.path, status))

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                self._send(404, {"error": f"not in the stand-in: GET {self.path}"})

            def do_POST(self):
                body = self._body()
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "validate-yaml"]:
                    errors = hub.validate_card(json.loads(body))
                    with hub._lock:
                        hub.validated += 1
                    return self._send(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
                if parts[:3] == ["api", "repos", "create"]:
                    req = json.loads(body)
                    repo = f"{req.get('organization') or 'me'}/{req['name']}" if "/" not in req["name"] else req["name"]
                    if req.get("type") != "dataset":
                        return self._send(400, {"error": f"the stand-in only holds datasets, not {req.get('type')}"})
                    with hub._lock:
                        if repo in hub.repos:
                            return self._send(409, {"error": "You already created this dataset repo", "url": f"{hub.url}/datasets/{repo}"})
                        # huggingface_hub 1.x sends "private"; 2.x "visibility" (public | private | ...).
                        hub.repos[repo] = {"private": bool(req.get("private")) or req.get("visibility") == "private"}
                        hub.files[repo], hub.commits[repo] = {}, []
                    return self._send(200, {"url": f"{hub.url}/datasets/{repo}", "name": repo})
                if len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] in ("preupload", "commit"):
                    repo = f"{parts[2]}/{parts[3]}"
                    if repo not in hub.repos:
                        return self._send(404, {"error": f"Repository Not Found: {repo}"})
                    if parts[4] == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                          for f in files], "commitOid": "0" * 40})
                    with hub._lock:
                        if hub.fail_commits > 0:
                            hub.fail_commits -= 1
                            return self._send(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
                    lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
                    header = next(x["value"] for x in lines if x["key"] == "header")
                    added = {}
                    for x in lines:
                        if x["key"] == "file":
                            v = x["value"]
                            if v.get("encoding") != "base64":
                                return self._send(400, {"error": f"unexpected encoding {v.get('encoding')}"})
                            added[v["path"]] = base64.b64decode(v["content"])
                        elif x["key"] != "header":
                            return self._send(400, {"error": f"the stand-in takes regular files only, got {x['key']}"})
                    oid = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(b).hexdigest()) for k, b in added.items())).encode()).hexdigest()
                    with hub._lock:
                        hub.files[repo].update(added)
                        hub.commits[repo].append(header["summary"])
                    return self._send(200, {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{oid}", "commitOid": oid,
                                            "pullRequestUrl": None})
                return self._send(404, {"error": f"not in the stand-in: POST {self.path}"})

        return Handler
