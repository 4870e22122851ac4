//! What a Service's ClusterIP does for the load generator here (there is no kube-proxy): each new
//! TCP connection goes to the next Ready pod matching the selector, round-robin, and stays there.
//! Like a real Service, it never moves an established connection, so load on the pods that
//! existed before a scale-up stays where it is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

use crate::node_agent::Pods;

/// A listening "Service" in front of the agent's pods.
pub(crate) struct ServiceProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ServiceProxy {
    /// Listens on 127.0.0.1:0 and forwards to pods labelled `key=value`.
    pub(crate) async fn start(pods: Pods, key: &'static str, value: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let endpoints = pods.endpoints(key, value);
                if endpoints.is_empty() {
                    // No ready endpoint: the connection is refused, as with a Service without
                    // endpoints.
                    continue;
                }
                let target = endpoints[next.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
