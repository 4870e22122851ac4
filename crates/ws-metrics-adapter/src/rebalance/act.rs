//! The controller's two actions on pods: the shed request of the shed contract
//! (`docs/shed-contract.md`, version 1) and the deletion-cost patch.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::pods::DELETION_COST;

/// The `apiVersion` of the shed contract's request and answer.
pub const SHED_API_VERSION: &str = "shed.ws-metrics-adapter.io/v1";

/// Largest shed answer read. Unit: bytes.
const MAX_ANSWER_BYTES: usize = 4096;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a shed request did not get an answer the contract allows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShedError {
    /// No answer within `--rebalance-shed-timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be built (the URL from the annotation).
    #[error("bad shed URL {url:?}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: http::Error,
    },
    /// Connection, TLS or HTTP failure.
    #[error("request failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The pod answered with a status other than 200.
    #[error("the pod answered {code}: {body}")]
    Refused {
        /// HTTP status.
        code: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// A 200 whose body is not the contract's answer.
    #[error("the pod's answer is not a {SHED_API_VERSION} answer: {0}")]
    BadAnswer(String),
}

impl ShedError {
    /// The `outcome` label of `ws_metrics_adapter_shed_requests_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Url { .. } | Self::Request(_) => "request_failed",
            Self::Refused { .. } => "refused",
            Self::BadAnswer(_) => "bad_answer",
        }
    }
}

/// Sends shed requests.
#[derive(Debug, Clone)]
pub(crate) struct Shedder {
    client: HttpsClient,
    timeout: Duration,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    api_version: String,
    closing: u64,
}

impl Shedder {
    /// A client trusting `tls` for https pods (the scrape client's roots), with `timeout` per
    /// request.
    pub(crate) fn new(tls: rustls::ClientConfig, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector),
            timeout,
        }
    }

    /// Asks the pod at `url` to close `count` connections; returns how many it says it is
    /// closing (at most `count`).
    pub(crate) async fn shed(&self, url: &str, count: u64) -> Result<u64, ShedError> {
        let body = serde_json::json!({"apiVersion": SHED_API_VERSION, "count": count}).to_string();
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| ShedError::Url {
                url: url.to_owned(),
                source,
            })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(ShedError::Request)?;
            let code = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(|e| ShedError::BadAnswer(format!("reading the body: {e}")))?;
            let text = String::from_utf8_lossy(&bytes);
            if code != 200 {
                return Err(ShedError::Refused {
                    code,
                    body: text.chars().take(200).collect(),
                });
            }
            let answer: Answer =
                serde_json::from_str(&text).map_err(|e| ShedError::BadAnswer(e.to_string()))?;
            if answer.api_version != SHED_API_VERSION {
                return Err(ShedError::BadAnswer(format!(
                    "apiVersion {:?}",
                    answer.api_version
                )));
            }
            Ok(answer.closing.min(count))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ShedError::Timeout(self.timeout))?
    }
}

/// Writes `cost` as the pod's deletion cost (a merge patch of one annotation: RBAC `patch` on
/// pods, nothing broader).
pub(crate) async fn patch_deletion_cost(
    client: kube::Client,
    namespace: &str,
    name: &str,
    cost: i32,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {DELETION_COST: cost.to_string()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering `status` and `body`; returns its URL and the request it
    /// got.
    async fn pod(status: &str, body: &str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Head, then the body of the Content-Length it names.
            loop {
                let n = s.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if rest.len() >= len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&got).into_owned()
        });
        (format!("http://{addr}/shed"), task)
    }

    fn shedder() -> Shedder {
        crate::tls::install_provider();
        let tls = crate::tls::client::config(crate::tls::client::ClientTls {
            ca_file: None,
            identity: None,
        })
        .expect("client tls");
        Shedder::new(tls, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn a_shed_request_follows_the_contract() {
        let (url, got) = pod(
            "200 OK",
            r#"{"apiVersion":"shed.ws-metrics-adapter.io/v1","closing":7}"#,
        )
        .await;
        assert_eq!(shedder().shed(&url, 9).await.expect("answered"), 7);
        let request = got.await.expect("server");
        assert!(request.starts_with("POST /shed HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("content-type: application/json"),
            "{request}"
        );
        assert!(
            request.ends_with(r#"{"apiVersion":"shed.ws-metrics-adapter.io/v1","count":9}"#),
            "{request}"
        );
    }

    #[tokio::test]
    async fn refusals_and_foreign_answers_are_errors_never_counts() {
        let (url, _) = pod("404 Not Found", "no such route").await;
        let e = shedder().shed(&url, 3).await.expect_err("404");
        assert_eq!(e.label(), "refused");
        assert!(e.to_string().contains("404"), "{e}");
        let (url, _) = pod("200 OK", r#"{"apiVersion":"v2","closing":3}"#).await;
        assert_eq!(
            shedder().shed(&url, 3).await.expect_err("v2").label(),
            "bad_answer"
        );
        // More than asked is taken as what was asked.
        let (url, _) = pod(
            "200 OK",
            r#"{"apiVersion":"shed.ws-metrics-adapter.io/v1","closing":50}"#,
        )
        .await;
        assert_eq!(shedder().shed(&url, 3).await.expect("answered"), 3);
    }
}
