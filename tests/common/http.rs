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
    exchange(&mut stream, method, path, token).expect("an HTTP answer")
}

/// Sends `method path` over HTTPS to 127.0.0.1:`port`, the server's certificate checked
/// against the CA in `ca` for the name 127.0.0.1; an error when TLS or HTTP fails.
#[allow(dead_code)]
pub fn https_request(
    port: u16,
    ca: &std::path::Path,
    path: &str,
    token: Option<&str>,
) -> Result<Answer, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(super::pki::roots(ca))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    exchange(&mut stream, "GET", path, token)
}

/// One request and its answer, read to the end of the stream.
fn exchange(
    stream: &mut impl ReadWrite,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<Answer, String> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // A TLS peer that closes without close_notify still gave its whole answer.
    if let Err(err) = stream.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(err.to_string());
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

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

/// The CDRs (JSON lines) of `file`, once it has `count` of them or after 10 s.
#[allow(dead_code)]
pub fn cdr_lines(file: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a CDR is JSON"))
            .collect();
        if lines.len() >= count || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
