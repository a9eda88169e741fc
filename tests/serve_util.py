"""What the tests of vit serve share: a server on 127.0.0.1 at a free port, stopped when the
test leaves it, and requests with a timeout."""
import http.client
import re
import signal
import subprocess
import threading
import time


class Server:
    """vit serve on a free port; stopped (SIGTERM, then SIGKILL) when the test leaves."""
    vit = "vit"  # the executable, set by the test

    def __init__(self, *args, log=None):
        """log: an open file for the server's log (a benchmark's: no reader thread takes CPU
        from the server); otherwise a thread collects it in self.log."""
        self.log = []
        self.proc = subprocess.Popen([Server.vit, "serve", "--port", "0", *args], stdout=subprocess.DEVNULL,
                                     stderr=log or subprocess.PIPE, text=True, errors="replace")
        deadline = time.time() + 30
        if log:  # the whole file so far, until the line shows or the server exits
            while True:
                log.seek(0)
                self.log = log.readlines()
                if (any("listening on" in line for line in self.log) or self.proc.poll() is not None
                        or time.time() >= deadline):
                    break
                time.sleep(0.02)
        else:
            while time.time() < deadline:
                line = self.proc.stderr.readline()
                if not line:
                    break
                self.log.append(line)
                if "listening on" in line:
                    break
        for line in self.log:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
        if not hasattr(self, "port"):
            self.proc.kill()
            raise RuntimeError("vit serve did not start: " + "".join(self.log))
        self.reader = None
        if not log:
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def request(self, method, path, body=None, headers=None, timeout=20):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.reader:
            self.reader.join(timeout=5)
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
