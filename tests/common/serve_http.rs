//! `webvlm serve` as a child process on a free port, and a small HTTP/1.1 client over
//! `std::net::TcpStream` (whole responses, or server-sent events read as they come).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// `webvlm serve --port 0` with `args`; returns once it prints its address.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_webvlm"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("webvlm serve starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the server's first line");
        let Some(addr) = line.split("http://").nth(1).and_then(|rest| rest.split('/').next()) else {
            let _ = child.wait();
            panic!("the server did not start: {line:?}\n{}", stderr.lock().unwrap());
        };
        Server { addr: addr.to_string(), child, stderr }
    }

    /// The server's exit status once it has exited on its own, waiting at most `limit`.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("the server's status") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
    }

    /// One request on a fresh connection, read to its end.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut stream = self.send(method, path, headers, body);
        let mut reader = BufReader::new(&mut stream);
        let (status, headers) = read_head(&mut reader);
        let body = if header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            while let Some(chunk) = read_chunk(&mut reader) {
                body.extend(chunk);
            }
            body
        } else {
            let length: usize = header(&headers, "content-length").map_or(0, |v| v.parse().expect("a content length"));
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("the response body");
            body
        };
        Response { status, headers, body }
    }

    /// Sends a request and returns the connection, the response unread.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(&self.addr).expect("the server accepts a connection");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).expect("the request is sent");
        stream
    }

    /// A streaming chat request: its status and the events as they come.
    pub fn stream(&self, body: &Value) -> EventStream {
        let stream =
            self.send("POST", "/v1/chat/completions", &[("Content-Type", "application/json")], body.to_string().as_bytes());
        EventStream::from_stream(stream)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A server-sent event stream being read.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pending: String,
}

impl EventStream {
    /// Reads the response head of a request sent on `stream`.
    pub fn from_stream(stream: TcpStream) -> EventStream {
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        EventStream { reader, status, headers, pending: String::new() }
    }

    /// The next event's `data`, `None` at the end of the body.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..end + 2).collect();
                let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                return Some(data.join("\n"));
            }
            let chunk = read_chunk(&mut self.reader)?;
            self.pending.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        }
    }

    /// Every remaining event's data.
    pub fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_data()).collect()
    }

    /// Hangs up with the rest unread.
    pub fn disconnect(self) {
        let _ = self.reader.get_ref().shutdown(Shutdown::Both);
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The status line and headers.
fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a status line");
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("a header line");
        let Some((name, value)) = line.trim_end().split_once(':') else { break };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    (status, headers)
}

/// One chunk of a chunked body, `None` after the last.
fn read_chunk(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim(), 16).unwrap_or_else(|_| panic!("chunk size {line:?}"));
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).ok()?;
    chunk.truncate(size);
    (size > 0).then_some(chunk)
}
