//! A minimal HTTP/1.1 client for the tests that talk to Bridgehead's admin server: one request
//! per connection (`Connection: close`), the answer read to its end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

/// Sends `method path` to 127.0.0.1:`port`, with `token` as a bearer token when given.
pub fn request(port: u16, method: &str, path: &str, token: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("admin server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("answer");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Answer {
        status,
        body: body.to_string(),
    }
}

/// The value of the sample `series` (its name and labels, as written) in OpenMetrics `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// An HTTP endpoint on 127.0.0.1:`port` that takes POSTed JSON arrays (CDR batches), keeps
/// their elements, and answers 200; it runs until the test process ends.
pub fn json_sink(port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> {
    use std::io::BufRead;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("sink port");
    let kept = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream);
            // One request per connection or several (keep-alive): each with Content-Length.
            loop {
                let mut length = 0;
                let mut line = String::new();
                let mut started = false;
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    started = true;
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                if !started {
                    break;
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    break;
                }
                if let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(&body) {
                    kept.lock().expect("sink").extend(items);
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                if reader.get_mut().write_all(answer).is_err() {
                    break;
                }
            }
        }
    });
    got
}
