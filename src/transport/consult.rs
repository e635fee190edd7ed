//! Lookups' consultation services over HTTP(S) (reqwest, rustls): each [`LookupRequest`] a
//! shard's engine queues is a `GET` on the shared runtime, never on the shard, and its answer
//! goes back to that shard's queue. The engine keeps the deadline itself; the request's own
//! timeout only frees what a service that hangs would hold.

use super::ShardInput;
use crate::lookup::{LookupAnswer, LookupRequest};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// The longest value a service may answer (more is a failure).
const MAX_VALUE: usize = 4096;

/// Asks the consultation services, for every shard.
pub struct Consultant {
    client: reqwest::Client,
    runtime: Handle,
}

impl Consultant {
    /// A client with its connection pool, on `runtime`.
    pub fn new(runtime: Handle) -> anyhow::Result<Consultant> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(super::tls::https_client_config(None)?)
            .user_agent(concat!("Bridgehead/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Consultant { client, runtime })
    }

    /// Sends `request`; its answer goes to `shard` as [`ShardInput::LookupAnswer`].
    pub fn ask(&self, request: LookupRequest, shard: mpsc::UnboundedSender<ShardInput>) {
        let client = self.client.clone();
        self.runtime.spawn(async move {
            let answer = consult(&client, &request).await;
            let _ = shard.send(ShardInput::LookupAnswer(request.id, answer));
        });
    }
}

/// One `GET`: `200` gives the body (trimmed) as the value, `404` no value, anything else a
/// failure named by its status or its error.
async fn consult(client: &reqwest::Client, request: &LookupRequest) -> LookupAnswer {
    let response = match client
        .get(&request.url)
        .timeout(request.timeout)
        .send()
        .await
    {
        Ok(response) => response,
        Err(err) if err.is_timeout() => return LookupAnswer::Failed("timeout".into()),
        Err(err) if err.is_connect() => return LookupAnswer::Failed("connection refused".into()),
        Err(err) => return LookupAnswer::Failed(format!("request failed: {err}")),
    };
    match response.status().as_u16() {
        200 => match response.bytes().await {
            Ok(body) if body.len() <= MAX_VALUE => {
                LookupAnswer::Found(String::from_utf8_lossy(&body).trim().to_string())
            }
            Ok(body) => LookupAnswer::Failed(format!("answer of {} bytes", body.len())),
            Err(err) => LookupAnswer::Failed(format!("answer cut: {err}")),
        },
        404 => LookupAnswer::NotFound,
        status => LookupAnswer::Failed(format!("status {status}")),
    }
}
