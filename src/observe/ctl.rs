//! `bridgehead ctl`: the admin API from a shell, with human tables by default and the API's
//! JSON with `--json`.

use serde_json::Value;

/// What `ctl` is asked to do.
#[derive(Clone, Debug)]
pub enum Order {
    Status,
    List,
    Show(String),
    HangUp(String),
    Reload,
    Drain,
}

/// Where the admin API is and how to speak to it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The server's base URL (`http://127.0.0.1:8480`).
    pub url: String,
    pub token: Option<String>,
    /// The CA an HTTPS server's certificate must chain to (none: the Mozilla roots).
    pub ca: Option<std::path::PathBuf>,
    /// Print the API's JSON as it is.
    pub json: bool,
}

/// Runs `order` against `target`; the exit code: 0 done, 1 refused by the API, 2 no answer.
pub fn run(target: &Target, order: &Order) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ctl: {err}");
            return 2;
        }
    };
    match runtime.block_on(ask(target, order)) {
        Ok((status, body)) => {
            if target.json {
                println!("{body}");
            } else {
                print!("{}", human(order, &body));
            }
            if (200..300).contains(&status) {
                0
            } else {
                if !target.json {
                    eprintln!("ctl: the admin API answered {status}");
                }
                1
            }
        }
        Err(err) => {
            eprintln!("ctl: no answer from {}: {err}", target.url);
            2
        }
    }
}

/// Sends the order's request; the status and the body as JSON.
async fn ask(target: &Target, order: &Order) -> anyhow::Result<(u16, Value)> {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(crate::transport::tls::https_client_config(
            target.ca.as_deref(),
        )?)
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let base = target.url.trim_end_matches('/');
    let call = |id: &str| {
        format!(
            "{base}/api/calls/{}",
            percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    let request = match order {
        Order::Status => client.get(format!("{base}/api/status")),
        Order::List => client.get(format!("{base}/api/calls")),
        Order::Show(id) => client.get(call(id)),
        Order::HangUp(id) => client.delete(call(id)),
        Order::Reload => client.post(format!("{base}/api/reload")),
        Order::Drain => client.post(format!("{base}/api/drain")),
    };
    let request = match &target.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let answer = request.send().await?;
    let status = answer.status().as_u16();
    let text = answer.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// Seconds as `1h02m03s`, `2m03s` or `3.4s`.
fn duration(seconds: f64) -> String {
    let whole = seconds as u64;
    match whole {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m{:02}s", whole / 3600, whole / 60 % 60, whole % 60),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// The answer as a person reads it.
fn human(order: &Order, body: &Value) -> String {
    if let Some(error) = body.get("error") {
        return format!("{}\n", text(error));
    }
    match order {
        Order::List => {
            let mut out = format!(
                "{:<36} {:<11} {:>9} {:>9} {:<24} {:>3}\n",
                "CALL", "STATE", "AGE", "TALK", "TRUNKS", "VER"
            );
            for call in body.as_array().into_iter().flatten() {
                let talk = call["talk_s"].as_f64().map_or("-".to_string(), duration);
                out += &format!(
                    "{:<36} {:<11} {:>9} {:>9} {:<24} {:>3}\n",
                    text(&call["id"]),
                    text(&call["state"]),
                    duration(call["age_s"].as_f64().unwrap_or(0.0)),
                    talk,
                    format!(
                        "{} -> {}",
                        text(&call["a"]["trunk"]),
                        text(&call["b"]["trunk"])
                    ),
                    text(&call["version"]),
                );
            }
            out
        }
        Order::Show(_) => {
            let mut out = String::new();
            for key in ["id", "state", "version", "shard", "attempts"] {
                out += &format!("{key:<10} {}\n", text(&body[key]));
            }
            out += &format!(
                "{:<10} {}\n",
                "age",
                duration(body["age_s"].as_f64().unwrap_or(0.0))
            );
            if let Some(talk) = body["talk_s"].as_f64() {
                out += &format!("{:<10} {}\n", "talk", duration(talk));
            }
            for leg in ["a", "b"] {
                let l = &body[leg];
                out += &format!(
                    "{leg}-leg      {} on {} from {} ({}), media {}, MOS {}\n",
                    text(&l["call_id"]),
                    text(&l["trunk"]),
                    text(&l["peer"]),
                    text(&l["party"]),
                    l["media"].as_array().map_or("-".to_string(), |m| {
                        m.iter().map(text).collect::<Vec<_>>().join(", ")
                    }),
                    text(&l["quality"]["mos"]),
                );
            }
            out
        }
        Order::HangUp(_) => format!("hung up {}\n", text(&body["hung_up"])),
        Order::Reload => match body.get("refused") {
            Some(errors) => errors
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| format!("{}\n", text(e)))
                .collect(),
            None => format!(
                "reloaded: new calls take version {}\n",
                text(&body["version"])
            ),
        },
        Order::Drain => format!(
            "draining: new calls refused, calls in progress have {} s\n",
            text(&body["timeout_s"])
        ),
        Order::Status => format!(
            "bridgehead {}, up {}, {} shard(s), {} call(s), {} answered\n",
            text(&body["version"]),
            duration(body["uptime_s"].as_f64().unwrap_or(0.0)),
            text(&body["shards"]),
            text(&body["calls"]),
            text(&body["answered"]),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_read_as_tables_and_lines() {
        assert_eq!(duration(3.42), "3.4s");
        assert_eq!(duration(123.0), "2m03s");
        assert_eq!(duration(3723.0), "1h02m03s");
        let calls = json!([{
            "id": "abc@host", "state": "answered", "age_s": 65.0, "talk_s": 60.0,
            "version": 2, "a": {"trunk": "core"}, "b": {"trunk": "teams"}
        }]);
        let table = human(&Order::List, &calls);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("CALL"), "{table}");
        assert!(lines[1].starts_with("abc@host"), "{table}");
        assert!(lines[1].contains("answered") && lines[1].contains("1m05s"));
        assert!(lines[1].contains("core -> teams"), "{table}");
        let refused = json!({"refused": ["rules.lua:2: unexpected symbol"]});
        assert_eq!(
            human(&Order::Reload, &refused),
            "rules.lua:2: unexpected symbol\n"
        );
        let missing = json!({"error": "no call x"});
        assert_eq!(human(&Order::Show("x".into()), &missing), "no call x\n");
    }
}
