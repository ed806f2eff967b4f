//! One face over rumqttc's two clients (MQTT 5 and 3.1.1), so the session loop is written once.
//! It owns option building and event translation; it must never decide when to acknowledge.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;

use super::{reach, tls::TlsError};
use crate::{
    config::{MqttSettings, MqttVersion},
    message::{Message, Origin},
};

/// MQTT's largest packet; tidegate accepts every message the broker sends and rejects over-size
/// payloads itself, so an over-size message is recorded instead of looping the connection.
const MAX_PACKET: u32 = 268_435_460;

/// How many unacknowledged messages tidegate lets an MQTT 5 broker send at once.
pub const RECEIVE_MAXIMUM: u16 = 1000;

/// Room in rumqttc's request channel, which is allocated up front (~216 bytes a slot). Acks
/// that find it full wait in the ack gate's overflow queue, so this only sets how many leave
/// without waiting.
const REQUEST_CAPACITY: usize = 4096;

/// Packet ids tidegate's own outgoing packets (SUBSCRIBE, UNSUBSCRIBE) may use at once; it
/// publishes nothing. rumqttc's MQTT 5 client preallocates a slot per id, 65,535 by default:
/// ~14 MiB of resident memory for nothing.
const OUTGOING_INFLIGHT: u16 = 100;

#[derive(Clone)]
pub enum Client {
    V5(v5::AsyncClient),
    V4(rumqttc::AsyncClient),
}

pub enum EventLoop {
    V5(Box<v5::EventLoop>),
    V4(Box<rumqttc::EventLoop>),
}

/// What is needed to acknowledge one delivery later: its packet id and QoS.
pub enum AckToken {
    V5 { pkid: u16, qos: v5::mqttbytes::QoS },
    V4 { pkid: u16, qos: rumqttc::QoS },
}

/// The events the session loop cares about.
#[allow(clippy::large_enum_variant)] // one at a time, moved straight into the pipeline
pub enum Event {
    ConnAck {
        session_present: bool,
        detail: String,
    },
    Publish(Message, Option<AckToken>),
    SubAck {
        failures: Vec<String>,
    },
    /// The broker ended the connection (MQTT 5 DISCONNECT with a reason).
    Disconnected(String),
    /// tidegate's own DISCONNECT went out.
    DisconnectSent,
    Other,
}

/// Nagle's algorithm stays on for the MQTT socket: rumqttc writes one PUBACK per syscall, and
/// after a commit the acks of a whole batch leave together, so coalescing them into a few
/// segments saves the broker thousands of packets (measured: ~20 % more throughput than
/// TCP_NODELAY). Latency does not suffer: the broker's next PUBLISH carries the TCP ACK.
pub fn build(s: &MqttSettings) -> Result<(Client, EventLoop), TlsError> {
    let keep_alive = s.keep_alive.max(Duration::from_secs(5));
    Ok(match s.version {
        MqttVersion::V5 => {
            let mut o = reach::v5_options(s.client_id.clone(), &s.access)?;
            o.set_keep_alive(keep_alive)
                .set_clean_start(false)
                .set_session_expiry_interval(Some(s.session_expiry.as_secs() as u32))
                .set_manual_acks(true)
                .set_receive_maximum(Some(RECEIVE_MAXIMUM))
                .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
                .set_max_packet_size(Some(MAX_PACKET))
                .set_connection_timeout(10);
            let (c, e) = v5::AsyncClient::new(o, REQUEST_CAPACITY);
            (Client::V5(c), EventLoop::V5(Box::new(e)))
        }
        MqttVersion::V311 => {
            let mut o = reach::v4_options(s.client_id.clone(), &s.access)?;
            o.set_keep_alive(keep_alive)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_max_packet_size(MAX_PACKET as usize, 256 * 1024);
            let (c, e) = rumqttc::AsyncClient::new(o, REQUEST_CAPACITY);
            (Client::V4(c), EventLoop::V4(Box::new(e)))
        }
    })
}

fn qos_of(q: u8) -> rumqttc::QoS {
    if q == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

impl Client {
    /// Queues a PUBACK; an error means the request channel is full (or the loop is gone).
    pub fn try_ack(&self, token: &AckToken) -> Result<(), ()> {
        match (self, token) {
            (Client::V5(c), AckToken::V5 { pkid, qos }) => {
                let mut p = v5::mqttbytes::v5::Publish::new("", *qos, Bytes::new(), None);
                p.pkid = *pkid;
                c.try_ack(&p).map_err(|_| ())
            }
            (Client::V4(c), AckToken::V4 { pkid, qos }) => {
                let mut p = rumqttc::Publish::new("", *qos, Vec::new());
                p.pkid = *pkid;
                c.try_ack(&p).map_err(|_| ())
            }
            _ => Ok(()),
        }
    }

    pub fn try_subscribe(&self, filters: &[String], qos: u8) -> Result<(), String> {
        match self {
            Client::V5(c) => c
                .try_subscribe_many(filters.iter().map(|f| {
                    let mut filter = v5::mqttbytes::v5::Filter::new(f.clone(), v5_qos(qos));
                    // Resend retained messages only for a new subscription, not on every resubscribe.
                    filter.retain_forward_rule = v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
                    filter
                }))
                .map_err(|e| e.to_string()),
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos_of(qos))),
                )
                .map_err(|e| e.to_string()),
        }
    }

    pub fn try_unsubscribe(&self, filters: &[String]) -> Result<(), String> {
        for f in filters {
            match self {
                Client::V5(c) => c.try_unsubscribe(f.clone()).map_err(|e| e.to_string())?,
                Client::V4(c) => c.try_unsubscribe(f.clone()).map_err(|e| e.to_string())?,
            }
        }
        Ok(())
    }

    pub fn try_disconnect(&self) {
        let _ = match self {
            Client::V5(c) => c.try_disconnect().map_err(|_| ()),
            Client::V4(c) => c.try_disconnect().map_err(|_| ()),
        };
    }
}

fn v5_qos(q: u8) -> v5::mqttbytes::QoS {
    if q == 0 {
        v5::mqttbytes::QoS::AtMostOnce
    } else {
        v5::mqttbytes::QoS::AtLeastOnce
    }
}

/// A connection failure, described without secrets (rumqttc errors never carry the password).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectionError(pub String);

/// What the broker announced in its CONNACK that bears on tidegate, as `name=value` pairs for
/// the log: only what it sent (an absent property is MQTT's default), `none` when nothing.
fn connack_detail(p: Option<&v5::mqttbytes::v5::ConnAckProperties>) -> String {
    p.map_or_else(
        || "none".into(),
        |p| {
            announced(
                p.receive_max,
                p.max_packet_size,
                p.session_expiry_interval,
                p.shared_subscription_available,
            )
        },
    )
}

fn announced(
    receive_max: Option<u16>,
    max_packet_size: Option<u32>,
    session_expiry: Option<u32>,
    shared_subscriptions: Option<u8>,
) -> String {
    let parts: Vec<String> = [
        receive_max.map(|v| format!("receive_maximum={v}")),
        max_packet_size.map(|v| format!("max_packet_size={v}")),
        session_expiry.map(|v| format!("session_expiry={v}s")),
        shared_subscriptions.map(|v| format!("shared_subscriptions={}", if v == 0 { "no" } else { "yes" })),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

impl EventLoop {
    pub async fn poll(
        &mut self,
        session: &std::sync::Arc<str>,
        max_payload: usize,
    ) -> Result<Event, ConnectionError> {
        match self {
            EventLoop::V5(e) => {
                use v5::{mqttbytes::v5::Packet, Event as E};
                match e
                    .poll()
                    .await
                    .map_err(|e| ConnectionError(reach::describe_v5(&e)))?
                {
                    E::Incoming(Packet::ConnAck(ca)) => Ok(Event::ConnAck {
                        session_present: ca.session_present,
                        detail: connack_detail(ca.properties.as_ref()),
                    }),
                    // The event is ours: its payload and properties move into the message
                    // rather than being copied (and the copies' reference counts dropped).
                    E::Incoming(Packet::Publish(p)) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let qos = p.qos as u8;
                        let mut m = Message::new(
                            topic,
                            p.payload,
                            qos.min(2),
                            p.retain,
                            Origin::Mqtt {
                                session: session.clone(),
                                pkid: p.pkid,
                                redelivery: p.dup,
                            },
                            max_payload,
                        );
                        if let Some(props) = p.properties {
                            m.content_type = props.content_type;
                            m.user_properties = props.user_properties;
                        }
                        let token = (p.qos != v5::mqttbytes::QoS::AtMostOnce).then_some({
                            AckToken::V5 {
                                pkid: p.pkid,
                                qos: p.qos,
                            }
                        });
                        Ok(Event::Publish(m, token))
                    }
                    E::Incoming(Packet::SubAck(s)) => Ok(Event::SubAck {
                        failures: s
                            .return_codes
                            .iter()
                            .filter(|c| !matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_)))
                            .map(|c| format!("{c:?}"))
                            .collect(),
                    }),
                    E::Incoming(Packet::Disconnect(d)) => {
                        Ok(Event::Disconnected(format!("{:?}", d.reason_code)))
                    }
                    E::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Event::DisconnectSent),
                    _ => Ok(Event::Other),
                }
            }
            EventLoop::V4(e) => {
                use rumqttc::{Event as E, Packet};
                match e
                    .poll()
                    .await
                    .map_err(|e| ConnectionError(reach::describe_v4(&e)))?
                {
                    E::Incoming(Packet::ConnAck(ca)) => Ok(Event::ConnAck {
                        session_present: ca.session_present,
                        detail: connack_detail(None),
                    }),
                    E::Incoming(Packet::Publish(p)) => {
                        let m = Message::new(
                            p.topic,
                            p.payload,
                            p.qos as u8,
                            p.retain,
                            Origin::Mqtt {
                                session: session.clone(),
                                pkid: p.pkid,
                                redelivery: p.dup,
                            },
                            max_payload,
                        );
                        let token = (p.qos != rumqttc::QoS::AtMostOnce).then_some({
                            AckToken::V4 {
                                pkid: p.pkid,
                                qos: p.qos,
                            }
                        });
                        Ok(Event::Publish(m, token))
                    }
                    E::Incoming(Packet::SubAck(s)) => Ok(Event::SubAck {
                        failures: s
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .map(|c| format!("{c:?}"))
                            .collect(),
                    }),
                    E::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Event::DisconnectSent),
                    _ => Ok(Event::Other),
                }
            }
        }
    }

    /// Forgets the connection and drains queued acks (see `ack::AckGate::new_generation`).
    pub fn clean(&mut self) {
        match self {
            EventLoop::V5(e) => e.clean(),
            EventLoop::V4(e) => e.clean(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connack_detail_names_only_what_the_broker_announced() {
        assert_eq!(connack_detail(None), "none");
        assert_eq!(announced(None, None, None, None), "none");
        assert_eq!(
            announced(Some(20), None, Some(3600), Some(0)),
            "receive_maximum=20 session_expiry=3600s shared_subscriptions=no"
        );
        assert_eq!(
            announced(None, Some(1024), None, Some(1)),
            "max_packet_size=1024 shared_subscriptions=yes"
        );
    }
}
