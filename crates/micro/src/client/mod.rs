//! The built-in `mucp` client, the typed client wrapper, and the retry
//! policy clients share.

mod lease;
mod mucp;
mod mux;
mod typed;

pub(crate) use lease::Leases;

#[cfg(feature = "grpc")]
pub(crate) use mucp::connections_per_address;
pub use mucp::MucpClient;
pub use typed::TypedClient;

use micro_core::{headers, Broker, CallOptions, Error, Message, Node, Request, Response, Result, Selector};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How many replies this process's `mucp` clients have dropped because
/// their caller had given up (its deadline passed, or it was cancelled):
/// a late reply never reaches another caller, and is counted here.
pub fn late_replies() -> u64 {
    mux::LATE_REPLIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Publishes as every client does: the topic and a message id (unless the
/// caller set one) in the headers, then through the broker.
pub(crate) async fn publish(broker: &dyn Broker, topic: &str, mut msg: Message) -> Result<()> {
    msg.header.insert(headers::TOPIC.into(), topic.into());
    msg.header.entry(headers::ID.into()).or_insert_with(|| uuid::Uuid::new_v4().to_string());
    broker.publish(topic, msg).await
}

/// How long an attempt may wait for a new connection, of the `left` of its
/// call: dialling a host that is down waits out the dial timeout, so unless
/// this is the `last` attempt, half is left for another node.
pub(crate) fn dial_limit(left: Duration, last: bool) -> Duration {
    if last {
        left
    } else {
        left / 2
    }
}

/// A dial that got no connection within `limit`.
pub(crate) fn dial_timed_out(address: &str, limit: Duration) -> Error {
    Error::timeout("go.micro.client", format!("dial {address}: no connection within {limit:?}"))
}

/// A transport failure as a client reports it (retried under the usual rules).
pub(crate) fn connection_error(e: &Error) -> Error {
    Error::internal("go.micro.client", format!("connection error: {}", e.detail))
}

/// What one attempt of a call ended with: the call's answer, or a
/// connection problem that another attempt (maybe to another node) may fix.
pub(crate) enum Attempt {
    Done(Result<Response>),
    Conn(Error),
}

/// The retry policy both protocols share: up to `retries` more attempts
/// after a connection error or a 503 (a node at its limit or stopping),
/// each to another node when the selector has one, with a short
/// exponential backoff; a node that failed is reported to the selector.
pub(crate) async fn with_retries<F, Fut>(
    selector: &dyn Selector,
    leases: &Leases,
    protocol: &str,
    req: &Request,
    opts: &CallOptions,
    retries: u32,
    mut attempt_at: F,
) -> Result<Response>
where
    F: FnMut(Arc<Node>, bool) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut exclude = Vec::new();
    let mut last = None;
    for attempt in 0..=retries {
        if attempt > 0 {
            // 10ms, 20ms, 40ms … capped at 1s.
            let backoff = Duration::from_millis(10u64 << (attempt - 1).min(7)).min(Duration::from_secs(1));
            // Boxed: a timer held inline would grow every call's future.
            Box::pin(tokio::time::sleep(backoff)).await;
        }
        // `selected`: the node came from the selector (and is told how it went).
        let (node, selected) = match &opts.address {
            Some(a) => (Arc::new(Node { address: a.clone(), ..Node::default() }), false),
            None => {
                let node = match leases.select(selector, &req.service, &exclude, protocol).await {
                    Ok(n) => n,
                    // Every node failed this call already: try them again.
                    Err(_) if !exclude.is_empty() => {
                        exclude.clear();
                        leases.select(selector, &req.service, &exclude, protocol).await?
                    }
                    Err(e) => return Err(e),
                };
                (node, true)
            }
        };
        let address = &node.address;
        // The last attempt may take all the time left; others leave room for a retry.
        let last_attempt = attempt == retries;
        match attempt_at(node.clone(), last_attempt).await {
            // Only the server's own refusal (at its limit, or stopping) is
            // retried: a 503 from a handler may come after it did its work.
            Attempt::Done(Err(e)) if e.code == 503 && e.id == "go.micro.server" && attempt < retries => {
                tracing::debug!(service = %req.service, %address, attempt, "node busy; trying another");
                if selected {
                    exclude.push(node.id.clone());
                }
                last = Some(e);
            }
            Attempt::Done(res) => {
                // The node answered, even if with an application error: it is healthy.
                if selected {
                    selector.mark(&req.service, &node.id, Ok(()));
                }
                return res;
            }
            Attempt::Conn(e) => {
                tracing::debug!(service = %req.service, %address, error = %e.detail, attempt, "call attempt failed");
                if selected {
                    selector.mark(&req.service, &node.id, Err(&e));
                    // Every thread of this client asks the selector again.
                    leases.void();
                    exclude.push(node.id.clone());
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::internal("go.micro.client", "no attempt made")))
}
