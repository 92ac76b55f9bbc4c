//! Task events, from the request handlers to containerd through one forwarder.
//!
//! Handlers never await a publish: they hand an event to [`EventTx`] (a channel), and one
//! forwarder task ([`forward`]) publishes the events in the order they were sent, each within
//! [`PUBLISH_DEADLINE`]; a failed or late publish is logged and dropped (as runc's shim does).
//! Where they go is an [`EventSink`]: containerd's publisher ([`Containerd`]) when serving, a
//! channel in unit tests.

use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::ttrpc::context::Context;
use log::warn;
use tokio::sync::{mpsc, oneshot};

/// How long one publish may take before it is given up.
pub const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

/// Where the forwarder publishes events.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) -> Result<(), String>;
}

/// containerd's event service, in the namespace the shim serves.
pub struct Containerd {
    pub publisher: RemotePublisher,
    pub namespace: String,
}

#[async_trait]
impl EventSink for Containerd {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) -> Result<(), String> {
        let ctx = Context {
            timeout_nano: PUBLISH_DEADLINE.as_nanos() as i64,
            ..Default::default()
        };
        self.publisher
            .publish(ctx, topic, &self.namespace, event)
            .await
            .map_err(|e| e.to_string())
    }
}

/// What travels to the forwarder: an event, or a request to say when all before it are out.
enum Envelope {
    Event(&'static str, Box<dyn MessageDyn>),
    Flush(oneshot::Sender<()>),
}

/// The handlers' end of the forwarder.
#[derive(Clone)]
pub struct EventTx(mpsc::UnboundedSender<Envelope>);

impl EventTx {
    /// Queue an event for publishing (never waits).
    pub fn send(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        if self.0.send(Envelope::Event(topic, event)).is_err() {
            warn!("event {topic} dropped: the forwarder is gone");
        }
    }

    /// Wait until every event sent before is published (or given up), at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Envelope::Flush(tx)).is_ok()
            && tokio::time::timeout(limit, rx).await.is_err()
        {
            warn!("events still queued after {limit:?}");
        }
    }
}

/// Start the forwarder publishing to `sink`; it ends when every [`EventTx`] is dropped.
pub fn forward(sink: impl EventSink) -> EventTx {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(envelope) = rx.recv().await {
            match envelope {
                Envelope::Event(topic, event) => {
                    match tokio::time::timeout(PUBLISH_DEADLINE, sink.publish(topic, event)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!("publish {topic}: {e}"),
                        Err(_) => warn!("publish {topic}: no answer in {PUBLISH_DEADLINE:?}"),
                    }
                }
                Envelope::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    EventTx(tx)
}

/// A sink that hands events to a channel (unit tests read them in order).
#[cfg(test)]
#[async_trait]
impl EventSink for mpsc::UnboundedSender<(String, Box<dyn MessageDyn>)> {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) -> Result<(), String> {
        self.send((topic.to_string(), event))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::events::task::{TaskExit, TaskStart};

    /// A sink that never answers.
    struct Stuck;

    #[async_trait]
    impl EventSink for Stuck {
        async fn publish(&self, _: &str, _: Box<dyn MessageDyn>) -> Result<(), String> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn events_arrive_in_the_order_sent() {
        let (sink, mut rx) = mpsc::unbounded_channel();
        let tx = forward(sink);
        tx.send("/tasks/start", Box::new(TaskStart::default()));
        tx.send("/tasks/exit", Box::new(TaskExit::default()));
        tx.flush(Duration::from_secs(1)).await;
        assert_eq!(rx.try_recv().unwrap().0, "/tasks/start");
        assert_eq!(rx.try_recv().unwrap().0, "/tasks/exit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_publish_is_given_up_after_the_deadline() {
        let tx = forward(Stuck);
        tx.send("/tasks/start", Box::new(TaskStart::default()));
        let started = tokio::time::Instant::now();
        tx.flush(PUBLISH_DEADLINE * 2).await;
        let waited = started.elapsed();
        assert!(
            waited >= PUBLISH_DEADLINE && waited < PUBLISH_DEADLINE * 2,
            "{waited:?}"
        );
    }
}
