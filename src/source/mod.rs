//! The MQTT source: connects to the broker (MQTT 5 or 3.1.1, TCP/TLS/WebSocket), keeps a
//! persistent session, and hands every delivery to the pipeline together with its `MqttAck`.
//! It must never acknowledge a delivery itself: only the writer does, after the commit.

pub mod ack;
mod client;
mod memory;
pub mod reach;
mod session;
mod strays;
mod subscription;
mod tls;
mod watchdog;

pub use client::RECEIVE_MAXIMUM;
pub use memory::Memory;
pub use session::{MqttSource, Resubscriber, SourceStatus};
